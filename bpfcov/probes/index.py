"""Building the probe index of one ELF object: functions (and line probes) ready to attach.

    index_object(path, lines=False, debug_dirs=()) -> ObjectIndex

Steps: validate the ELF; take function symbols (from separate debug info when the object
is stripped); fold aliases; locate each function in the source through the line table;
decode each probe site; demangle. The result is cached per object (see cache.py).
"""

from __future__ import annotations

import os

import numpy as np

from bpfcov.errors import BpfcovError, NoFunctionsError
from bpfcov.probes import cache
from bpfcov.probes.debuginfo import find_debug_file
from bpfcov.probes.demangle import demangle_all
from bpfcov.probes.dwarf import DwarfUnreadable, LineRows, read_line_rows
from bpfcov.probes.elf import ElfObject, Symbol
from bpfcov.probes.insn import find_probe_site, is_probeable
from bpfcov.probes.model import Function, LineTable, ObjectIndex, ProbeStatus
from bpfcov.progress import Progress

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


def _line_table(obj: ElfObject, rows: LineRows, functions: list[Function]) -> LineTable:
    """One probe per distinct is_stmt address that lies inside a measured function."""
    keep = rows.is_stmt & ~rows.end_sequence & (rows.file >= 0) & (rows.line > 0)
    address = rows.address[keep]
    file = rows.file[keep]
    line = rows.line[keep]
    # Dedupe by address: the first row at an address is the statement that begins there.
    address, first = np.unique(address, return_index=True)
    file, line = file[first], line[first]

    starts = np.array([f.address for f in functions], dtype=np.uint64)
    ends = np.array([f.address + max(f.size, 1) for f in functions], dtype=np.uint64)
    owner = np.searchsorted(starts, address, side="right").astype(np.int64) - 1
    valid = owner >= 0
    valid[valid] &= address[valid] < ends[owner[valid]]
    measured = np.array([f.measured for f in functions] + [False], dtype=bool)
    valid &= measured[np.where(owner >= 0, owner, len(functions))]

    address, file, line, owner = address[valid], file[valid], line[valid], owner[valid]
    offsets = np.zeros(len(address), dtype=np.uint64)
    probeable = np.ones(len(address), dtype=bool)
    for i, a in enumerate(address.tolist()):
        off = obj.file_offset(a)
        if off is None or not is_probeable(obj.read_at(off, 15)):
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


def _build(path: str, name: str, lines: bool, debug_dirs: tuple[str, ...], progress: Progress) -> ObjectIndex:
    """The index of the object read at `path`, called `name` in messages and reports."""
    warnings: list[str] = []
    with ElfObject(path) as obj:
        build_id = obj.build_id()
        debug_path = None
        symbols_from, dwarf_from = obj, obj
        debug_obj = None
        if not obj.has_symtab() or not obj.has_dwarf():
            debug_path = find_debug_file(obj, debug_dirs)
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
            table = None
            if lines:
                progress.update("building line probes")
                table = _line_table(obj, rows, functions) if rows is not None else LineTable.empty()
        finally:
            if debug_obj is not None:
                debug_obj.close()
    return ObjectIndex(name, build_id, functions, table, warnings, debug_path)


def index_object(path: str, lines: bool = False, debug_dirs: tuple[str, ...] = (),
                 use_cache: bool = True, quiet: bool = False, name: str | None = None) -> ObjectIndex:
    """The probe index of the ELF object at `path`, from the cache when it is fresh.

    `name` is the object's path as reports show it, when `path` is only a way to open it
    (a process's /proc/PID/map_files entry, or its view of another mount namespace)."""
    name = name or os.path.abspath(path)
    key = cache.key_for(path, lines, debug_dirs) if use_cache else None
    if key is not None:
        cached = cache.load(key)
        if cached is not None:
            cached.path = name
            return cached
    progress = Progress(f"indexing {os.path.basename(name)}", quiet=quiet)
    try:
        index = _build(path, name, lines, debug_dirs, progress)
    except BpfcovError:
        raise
    except Exception as e:
        # The file is untrusted input: whatever a malformed one makes the ELF reader raise
        # is the file's fault, said in one line (the cause stays chained for --debug).
        raise BpfcovError(f"{name}: malformed ELF file ({type(e).__name__}: {str(e)[:200]})") from e
    finally:
        progress.done()
    if key is not None:
        cache.store(key, index)
    return index
