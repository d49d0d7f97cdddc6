"""Building the probe index of one ELF object: functions (and line probes) ready to attach.

    index_object(path, lines=False, debug_dirs=()) -> ObjectIndex

Steps: validate the ELF; take function symbols (from separate debug info when the object
is stripped); fold aliases; locate each function in the source through the line table;
decode each probe site; demangle; give each line, and each place inlined code runs through
(inlines.py), the probe of its basic block (blocks.py). The result is cached per object
(see cache.py).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from bpfcov.errors import BpfcovError, NoFunctionsError
from bpfcov.probes import cache
from bpfcov.probes.blocks import CodeMap
from bpfcov.probes.debuginfo import locate_debug_file
from bpfcov.probes.demangle import demangle_all
from bpfcov.probes.dwarf import DwarfUnreadable, LineRows, read_line_rows
from bpfcov.probes.elf import ElfObject, Symbol
from bpfcov.probes.inlines import InlinesUnavailable, SourceFunction, read_inlined
from bpfcov.probes.insn import find_probe_site, is_probeable
from bpfcov.probes.model import Function, LineTable, ObjectIndex, ProbeStatus
from bpfcov.progress import Progress

# Set to 1, each line and each place inlined code runs through gets a probe at its own
# address rather than its basic block's: slower, for checking probes/blocks.py against
# itself (tests/test_lines.py) and for the probe counts in bench/.
PROBE_EVERY_LINE = "BPFCOV_PROBE_EVERY_LINE"

_BINDING_RANK = {"STB_GLOBAL": 0, "STB_WEAK": 1, "STB_GNU_UNIQUE": 1, "STB_LOCAL": 2}


def _primary_rank(sym: Symbol) -> tuple:
    """Which of several names for one address is the function's identity: prefer global
    symbols, then plain names over versioned (memcpy@@GLIBC…) and local aliases."""
    decorated = "@" in sym.name or sym.name.endswith(".localalias")
    return (_BINDING_RANK.get(sym.binding, 3), decorated, len(sym.name), sym.name)


def fold_aliases(symbols: list[Symbol]) -> list[tuple[Symbol, tuple[str, ...], int]]:
    """Group symbols by address: (primary symbol, other names, size), sorted by address."""
    by_address: dict[int, list[Symbol]] = {}
    for sym in symbols:
        by_address.setdefault(sym.address, []).append(sym)
    folded = []
    for address in sorted(by_address):
        group = sorted(by_address[address], key=_primary_rank)
        primary = group[0]
        aliases = tuple(sorted({s.name for s in group[1:]} - {primary.name}))
        folded.append((primary, aliases, max(s.size for s in group)))
    return folded


def _source_location(rows: LineRows | None, address: int, size: int):
    """(file, first line, last line) of the function at `address`, from the line table."""
    if rows is None or len(rows) == 0:
        return None, None, None
    i = rows.row_at(address)
    if i is None or rows.file[i] < 0 or rows.line[i] <= 0:
        return None, None, None
    file_id = int(rows.file[i])
    first = int(rows.line[i])
    lo, hi = rows.span(address, address + max(size, 1))
    inside = rows.line[lo:hi][rows.file[lo:hi] == file_id]
    last = int(inside.max()) if len(inside) else first
    return rows.files[file_id], first, max(first, last)


def _inlined_body_rows(rows: LineRows, usable: np.ndarray, inlined: list[tuple[int, int]],
                       address: np.ndarray, file: np.ndarray, line: np.ndarray):
    """Rows for the lines of inlined bodies that the is_stmt rows miss: gcc marks an
    inlined body's lines as statements at an address another line already begins at (a
    loop head), or not at all. Any row inside an instance's ranges may stand for such a
    line, at an address no other line probe has. (address, file, line) columns."""
    if not inlined:
        return None
    merged: list[list[int]] = []
    for low, high in sorted(inlined):
        if merged and low <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], high)
        else:
            merged.append([low, high])
    lows = np.array([m[0] for m in merged], dtype=np.uint64)
    highs = np.array([m[1] for m in merged], dtype=np.uint64)
    at = np.searchsorted(lows, rows.address, side="right").astype(np.int64) - 1
    inside = usable & (at >= 0) & (rows.address < highs[np.maximum(at, 0)])
    seen = set(zip(file.tolist(), line.tolist()))
    taken = set(address.tolist())
    extra: list[tuple[int, int, int]] = []
    for a, f, n in zip(rows.address[inside].tolist(), rows.file[inside].tolist(), rows.line[inside].tolist()):
        if (f, n) not in seen and a not in taken:
            seen.add((f, n))
            taken.add(a)
            extra.append((a, f, n))
    return extra or None


def _line_table(code_map: CodeMap, rows: LineRows, inlined: list[tuple[int, int]] | None = None) -> LineTable:
    """A row per distinct is_stmt address that lies inside a measured function, and one
    for each line of inlined code those miss (`inlined`: the instances' ranges). Each row's
    offset is where the probe telling its count sits: its basic block's (blocks.py)."""
    obj, functions = code_map.obj, code_map.functions
    usable = ~rows.end_sequence & (rows.file >= 0) & (rows.line > 0)
    keep = rows.is_stmt & usable
    address = rows.address[keep]
    file = rows.file[keep]
    line = rows.line[keep]
    # Dedupe by address: the first row at an address is the statement that begins there.
    address, first = np.unique(address, return_index=True)
    file, line = file[first], line[first]
    extra = _inlined_body_rows(rows, usable, inlined or [], address, file, line)
    if extra is not None:
        address = np.concatenate([address, np.array([e[0] for e in extra], dtype=np.uint64)])
        file = np.concatenate([file, np.array([e[1] for e in extra], dtype=file.dtype)])
        line = np.concatenate([line, np.array([e[2] for e in extra], dtype=line.dtype)])
        order = np.argsort(address, kind="stable")
        address, file, line = address[order], file[order], line[order]

    starts = np.array([f.address for f in functions], dtype=np.uint64)
    ends = np.array([f.address + max(f.size, 1) for f in functions], dtype=np.uint64)
    owner = np.searchsorted(starts, address, side="right").astype(np.int64) - 1
    valid = owner >= 0
    valid[valid] &= address[valid] < ends[owner[valid]]
    measured = np.array([f.measured for f in functions] + [False], dtype=bool)
    valid &= measured[np.where(owner >= 0, owner, len(functions))]

    address, file, line, owner = address[valid], file[valid], line[valid], owner[valid]
    offsets = np.zeros(len(address), dtype=np.uint64)
    probeable = np.ones(len(address), dtype=bool)  # False: nothing tells this row's count
    for i, a in enumerate(address.tolist()):
        teller = code_map.teller(a)
        off = obj.file_offset(teller) if teller is not None else None
        # A teller other than the row's own address was found probeable with its block;
        # the row's own instruction is checked here, where blocks are unknown.
        if off is None or (teller == a and not is_probeable(obj.read_at(off, 15))):
            probeable[i] = False
        else:
            offsets[i] = off
    used = sorted(set(file[probeable].tolist()))
    renumber = np.full(len(rows.files) + 1, -1, dtype=np.int32)
    renumber[used] = np.arange(len(used), dtype=np.int32)
    return LineTable(
        [rows.files[i] for i in used],
        address[probeable],
        offsets[probeable],
        renumber[file[probeable]],
        line[probeable].astype(np.int32),
        owner[probeable].astype(np.int32),
    )


class _InstanceSites:
    """Where to probe an inlined instance: at its entry, at the start of each of its other
    address ranges, and at each address inside its ranges that a jump goes to, so that no
    run of its code passes no probe (docs/inlined-functions.md). Each such point must be
    the start of an instruction of the function it lies in (decoded from that function's
    start); where uprobes refuse its instruction, the probe goes to the next one, by the
    rules function entries follow."""

    def __init__(self, code_map: CodeMap):
        self.code_map = code_map
        self.obj = code_map.obj

    def points(self, entry: int, ranges: tuple[tuple[int, int], ...]) -> list[int]:
        """The addresses to watch, entry first."""
        points = [entry] + [low for low, _ in ranges]
        holder = self.code_map.holder(ranges[0][0])
        if holder is not None:
            targets = self.code_map.jump_targets(holder)
            if targets is None:  # some indirect jump's targets are unknown: those known still count
                targets = self.code_map.code(holder).direct_targets
            points += sorted(t for t in set(targets) if any(low < t < high for low, high in ranges))
        return list(dict.fromkeys(points))

    def offset(self, address: int) -> int | None:
        """The file offset of the probe that tells how often `address` ran, if any."""
        if not self.code_map.is_instruction(address) or self.obj.file_offset(address) is None:
            return None
        teller = self.code_map.teller(address)
        if teller != address:
            return self.obj.file_offset(teller) if teller is not None else None
        site = find_probe_site(self.obj.read_at(self.obj.file_offset(address) or 0, 32), address)
        return self.obj.file_offset(site.address) if site.address is not None else None


def _with_inlined(obj: ElfObject, code_map: CodeMap, sources: list[SourceFunction]) -> list[Function]:
    """`functions` (from the symbols, sorted by address) with the code the compiler
    inlined: each source function's instances go to its out-of-line copy of the same name,
    and a source function with no such copy becomes a function of its own, after the
    others: probed at its instances, or `no-code` when the compiler left none."""
    functions = code_map.functions
    sites = _InstanceSites(code_map)
    by_name = {n: i for i, f in enumerate(functions) for n in (f.name, *f.aliases)}
    out = list(functions)
    extra: list[Function] = []
    taken = set(by_name)
    mangled = [s.name for s in sources if s.name.startswith(("_Z", "_R"))]
    pretty = demangle_all(mangled) if mangled else {}
    for source in sources:
        probed: list[tuple[int, ...]] = []
        unmeasured = 0
        for instance in source.instances:
            offsets = [sites.offset(point) for point in sites.points(instance.entry, instance.ranges)]
            kept = tuple(dict.fromkeys(o for o in offsets if o is not None))
            if kept:
                probed.append(kept)
            # Unsure when a path into it has no probe, or when its entry lies outside its
            # own ranges: then the call begins in the caller's instructions, gcc has merged
            # some of it into the caller's code, and on some paths none of its own
            # instructions run when it is called (sqlite's dupedExprStructSize).
            merged = instance.entry_pc and not any(low <= instance.entry < high for low, high in instance.ranges)
            unmeasured += None in offsets or merged
        # An instance with no code of its own may still have run: the compiler can merge
        # its instructions into the caller's (a load shared with another), and then
        # nothing tells. Only a function all of whose instances are like that, with no
        # out-of-line copy, has truly no code (no-code).
        unmeasured += source.folded if source.instances or source.copies else 0
        guessed = sum(not instance.entry_pc for instance in source.instances)
        # docs/inlined-functions.md: without DW_AT_entry_pc the first range's start stands
        # in, and nothing says every path into the instance passes there.
        caveat = f"{guessed} of its inlined instances have no DW_AT_entry_pc; each is probed at the start " \
                 "of its first address range" if guessed else ""
        owner = by_name.get(source.name)
        if owner is not None and functions[owner].address in source.copies:
            if source.instances or source.folded:
                f = out[owner]
                out[owner] = dataclasses.replace(
                    f, inlined_offsets=tuple(probed), inlined_instances=len(source.instances),
                    inlined_unmeasured=unmeasured,
                    probe_note="; ".join(filter(None, (f.probe_note, caveat))))
            continue
        if not source.instances and source.copies:
            continue  # only out-of-line copies (clones such as foo.part.0): their symbols say it all
        name = source.name
        if name in taken:  # a static function of the same name elsewhere
            name = f"{name}@{os.path.basename(source.decl_file or '?')}:{source.decl_line}"
        taken.add(name)
        if source.instances:
            address = min(instance.entry for instance in source.instances)
            probe = ProbeStatus.INLINED if probed else ProbeStatus.UNMEASURED
            note = caveat if probed else "no inlined instance has a safe place to probe"
        else:
            address, probe, note = 0, ProbeStatus.NO_CODE, "inlined everywhere and computed away"
        extra.append(Function(
            name=name, display_name=pretty.get(source.name, source.plain_name), address=address,
            offset=obj.file_offset(address) or 0, size=sum(instance.size for instance in source.instances),
            file=source.decl_file, line=source.decl_line, end_line=None, probe=probe, probe_note=note,
            out_of_line=False, inlined_offsets=tuple(probed), inlined_instances=len(source.instances),
            inlined_unmeasured=unmeasured))
    return out + extra


def _build(path: str, name: str, lines: bool, debug_path: str | None, progress: Progress,
           share_blocks: bool = True) -> ObjectIndex:
    """The index of the object read at `path`, called `name` in messages and reports, with
    symbols and DWARF from the separate file `debug_path` where it lacks them."""
    warnings: list[str] = []
    with ElfObject(path) as obj:
        build_id = obj.build_id()
        symbols_from, dwarf_from = obj, obj
        debug_obj = None
        if debug_path:
            debug_obj = ElfObject(debug_path)
            if debug_obj.has_symtab():
                symbols_from = debug_obj
            if debug_obj.has_dwarf():
                dwarf_from = debug_obj
        try:
            progress.update("reading symbols")
            symbols = [s for s in symbols_from.function_symbols() if obj.file_offset(s.address) is not None]
            if not symbols:
                raise NoFunctionsError(f"{name}: no function symbols to probe (stripped, with no debug file found)")
            rows = None
            progress.update("reading the DWARF line table")
            try:
                rows = read_line_rows(dwarf_from.elf)
            except DwarfUnreadable as e:
                warnings.append(f"{name}: corrupt DWARF ({e}); using symbols only, without source lines")
            folded = fold_aliases(symbols)
            names = [p.name for p, _, _ in folded]
            pretty = demangle_all(names)
            functions = []
            for n, (sym, aliases, size) in enumerate(folded):
                progress.update("locating functions", n, len(folded))
                file, first, last = _source_location(rows, sym.address, size)
                offset = obj.file_offset(sym.address)
                assert offset is not None  # symbols outside the loaded code were left out above
                site = find_probe_site(obj.read_at(offset, 32), sym.address)
                if site.address is None:
                    status, probe_offset = ProbeStatus.UNMEASURED, None
                else:
                    status = ProbeStatus.MOVED if site.moved else ProbeStatus.ENTRY
                    probe_offset = obj.file_offset(site.address)
                functions.append(Function(
                    name=sym.name, display_name=pretty.get(sym.name, sym.name),
                    address=sym.address, offset=offset, size=size,
                    file=file, line=first, end_line=last, aliases=aliases,
                    probe=status, probe_offset=probe_offset, probe_note=site.note))
            sources: list[SourceFunction] = []
            if dwarf_from.has_dwarf():
                progress.update("reading inlined functions")
                try:
                    sources = read_inlined(dwarf_from.path)
                except InlinesUnavailable as e:
                    warnings.append(f"{name}: inlined code is not indexed ({e}); functions inlined at -O2 "
                                    "may be reported never executed")
            table = None
            code_map = CodeMap(obj, functions, share_blocks)
            if lines:
                progress.update("building line probes")
                inlined = [r for source in sources for instance in source.instances for r in instance.ranges]
                table = _line_table(code_map, rows, inlined) if rows is not None else LineTable.empty()
            if sources:
                functions = _with_inlined(obj, code_map, sources)
        finally:
            if debug_obj is not None:
                debug_obj.close()
    return ObjectIndex(name, build_id, functions, table, warnings, debug_path)


def index_object(path: str, lines: bool = False, debug_dirs: tuple[str, ...] = (),
                 use_cache: bool = True, quiet: bool = False, name: str | None = None,
                 debuginfod: bool = True) -> ObjectIndex:
    """The probe index of the ELF object at `path`, from the cache when it is fresh.

    `name` is the object's path as reports show it, when `path` is only a way to open it
    (a process's /proc/PID/map_files entry, or its view of another mount namespace).
    `debuginfod`: whether missing debug info may be fetched (when servers are named)."""
    name = name or os.path.abspath(path)
    # For checking the block analysis: a probe on each line's own address, as before it.
    share_blocks = os.environ.get(PROBE_EVERY_LINE) != "1"
    progress = Progress(f"indexing {os.path.basename(name)}", quiet=quiet)
    no_debuginfod = None
    try:
        with ElfObject(path) as obj:
            debug_path, no_debuginfod = locate_debug_file(obj, debug_dirs, progress, debuginfod)
            key = cache.key_for(obj, lines, debug_path, share_blocks) if use_cache else None
        index = cache.load(key) if key is not None else None
        if index is not None:
            index.path = name
        else:
            index = _build(path, name, lines, debug_path, progress, share_blocks)
            if key is not None:
                cache.store(key, index)
    except NoFunctionsError as e:
        if no_debuginfod:
            raise NoFunctionsError(f"{name}: no function symbols to probe: it is stripped, and {no_debuginfod}") from e
        raise
    except BpfcovError:
        raise
    except Exception as e:
        # The file is untrusted input: whatever a malformed one makes the ELF reader raise
        # is the file's fault, said in one line (the cause stays chained for --debug).
        raise BpfcovError(f"{name}: malformed ELF file ({type(e).__name__}: {str(e)[:200]})") from e
    finally:
        progress.done()
    if no_debuginfod:
        # Said on every run, never cached: the next run may well find the server up.
        index.warnings = [f"{name}: {no_debuginfod}; traced from its own symbols, without its source lines",
                          *index.warnings]
    return index
