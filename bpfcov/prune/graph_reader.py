"""The static reference graph of one ELF object: which code and data refer to which.

A node is a function (an out-of-line copy with a symbol), a data object (an STT_OBJECT
symbol, bounded by its size), a PLT entry, a GOT slot, or a stretch of a section that no
symbol bounds. Edges come from:

- each function's machine code: direct calls and jumps (tail calls), every RIP-relative
  address (`lea fn(%rip)` takes a function's address, `mov x(%rip)` reads a datum, `call
  *slot(%rip)` goes through the GOT), the jump tables of its switches (blocks.py), and, in
  code built without -fPIE, every immediate that is an address in the object;
- data: the dynamic relocations that store an address (R_X86_64_RELATIVE, _64, GLOB_DAT,
  JUMP_SLOT, IRELATIVE, and packed SHT_RELR ones) make the object holding the slot refer
  to the address stored, and
  in a non-PIE executable, whose internal pointers need no relocation, so does every
  aligned word that holds an address of the object.

Roots are what the program starts from without any reference: the entry point, `_init`
and `_fini` (DT_INIT, DT_FINI), the exported dynamic symbols, and every stretch no symbol
bounds: .init_array, .fini_array and .preinit_array are such stretches, and so is any
anonymous datum, whose users the graph cannot tell (taking them all as roots can only make
more code reachable, never less). .eh_frame and the debug sections refer to every function
and are not references: the linker, too, lets them keep nothing alive.

Indirect calls are not followed: a function whose address is taken anywhere reachable is
reachable. That over-approximates every call through a pointer by the set of functions
whose address is taken, as the linker's --gc-sections does.
"""

from __future__ import annotations

import bisect
import re

import capstone
import numpy as np
from elftools.elf.dynamic import DynamicSection

from bpfcov.probes.blocks import CodeMap
from bpfcov.probes.elf import ElfObject
from bpfcov.probes.model import ObjectIndex
from bpfcov.prune.graph import Node, ReferenceGraph

_decoder = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)

_RIP = re.compile(r"\[rip ([+-]) (0x[0-9a-f]+|\d+)\]")
_HEX = re.compile(r"0x[0-9a-f]+")
_BRANCHES = ("call", "j", "loop", "notrack", "bnd", "xbegin")

# Elf64_Sym and Elf64_Rela, read with numpy: libpython has 100,000 of each.
_SYM = np.dtype([("name", "<u4"), ("info", "u1"), ("other", "u1"), ("shndx", "<u2"), ("value", "<u8"),
                 ("size", "<u8")])
_RELA = np.dtype([("offset", "<u8"), ("info", "<u8"), ("addend", "<i8")])
STT_OBJECT, STT_FUNC, STT_GNU_IFUNC = 1, 2, 10
STB_LOCAL = 0
STV_HIDDEN, STV_INTERNAL = 2, 1
R_64, R_GLOB_DAT, R_JUMP_SLOT, R_RELATIVE, R_IRELATIVE = 1, 6, 7, 8, 37
# Sections whose addresses are not references: unwind tables and debug info name every
# function; the linker does not let them keep code alive either.
_NOT_REFERENCES = (".eh_frame", ".eh_frame_hdr", ".gcc_except_table", ".debug", ".comment", ".note",
                   ".gnu.hash", ".hash", ".dynsym", ".dynstr", ".dynamic", ".rela", ".gnu.version", ".interp",
                   ".symtab", ".strtab")
_PLT_SECTIONS = (".plt", ".plt.sec", ".plt.got")
_GOT_SECTIONS = (".got", ".got.plt")
PLT_ENTRY = 16


class _Sections:
    """The object's allocated sections, found by address."""

    def __init__(self, obj: ElfObject):
        found = []
        for i, s in enumerate(obj.elf.iter_sections()):
            h = s.header
            if h.sh_flags & 0x2 and h.sh_size and h.sh_addr:  # SHF_ALLOC
                found.append((h.sh_addr, h.sh_addr + h.sh_size, s.name, bool(h.sh_flags & 0x4), i,
                              h.sh_type != "SHT_NOBITS", h.sh_offset))
        found.sort()
        self.spans = found
        self.starts = [s[0] for s in found]

    def at(self, address: int):
        i = bisect.bisect_right(self.starts, address) - 1
        if i >= 0 and address < self.spans[i][1]:
            return self.spans[i]
        return None

    def named(self, names) -> list:
        return [s for s in self.spans if s[2] in names]


def _symbols(obj: ElfObject, section_name: str):
    """(records, names) of a symbol table, or None when the object has none."""
    section = obj.elf.get_section_by_name(section_name)
    if section is None or section.header.sh_type == "SHT_NOBITS":
        return None
    records = np.frombuffer(section.data(), dtype=_SYM)
    strtab = obj.elf.get_section(section.header.sh_link).data()
    return records, strtab


def _relr_locations(entries: list[int]) -> list[int]:
    """The slots a SHT_RELR section relocates: an even entry is a slot's address, and an
    odd one a bitmap of the 63 slots after the last address (or the last bitmap's range)."""
    locations: list[int] = []
    where = 0
    for entry in entries:
        if entry & 1 == 0:
            locations.append(entry)
            where = entry + 8
        else:
            for bit in range(1, 64):
                if entry >> bit & 1:
                    locations.append(where + 8 * (bit - 1))
            where += 8 * 63
    return locations


def _name(strtab: bytes, offset: int) -> str:
    return strtab[offset:strtab.index(b"\0", offset)].decode("utf-8", "replace")


class _Builder:
    def __init__(self, obj: ElfObject, index: ObjectIndex, symbols_from: ElfObject):
        self.obj = obj
        self.index = index
        self.sections = _Sections(obj)
        self.nodes: list[Node] = []
        self.refs: list[set[int]] = []
        self.roots: dict[int, str] = {}
        self.node_of_function: dict[int, int] = {}
        self.position_dependent = obj.elf.header.e_type == "ET_EXEC"
        self._add_functions()
        self._add_data(symbols_from)
        self._add_slots()
        order = sorted(range(len(self.nodes)), key=lambda n: (self.nodes[n].address, -self.nodes[n].size))
        self.bounded = [n for n in order if self.nodes[n].size > 0]
        self.bounded_starts = [self.nodes[n].address for n in self.bounded]
        self.exact = {self.nodes[n].address: n for n in reversed(order)}
        self.gaps: dict[tuple[int, int], int] = {}

    def _node(self, node: Node) -> int:
        self.nodes.append(node)
        self.refs.append(set())
        return len(self.nodes) - 1

    def _add_functions(self) -> None:
        out_of_line = [i for i, f in enumerate(self.index.functions) if f.out_of_line]
        starts = sorted({self.index.functions[i].address for i in out_of_line})
        for i in out_of_line:
            f = self.index.functions[i]
            size = f.size
            if size == 0:
                # Hand-written code (crtstuff's frame_dummy) may have no size: it runs to
                # the next function, or to the end of its section.
                k = bisect.bisect_right(starts, f.address)
                section = self.sections.at(f.address)
                end = min(starts[k] if k < len(starts) else 1 << 64, section[1] if section else f.address)
                size = max(0, end - f.address)
            self.node_of_function[i] = self._node(Node(f.name, "function", f.address, size, i))

    def _add_data(self, symbols_from: ElfObject) -> None:
        table = _symbols(symbols_from, ".symtab") or _symbols(self.obj, ".dynsym")
        if table is None:
            return
        records, strtab = table
        objects = records[((records["info"] & 0xF) == STT_OBJECT) & (records["shndx"] != 0)
                          & (records["size"] > 0)]
        seen: set[int] = set()
        for name, value, size in zip(objects["name"].tolist(), objects["value"].tolist(), objects["size"].tolist()):
            if value in seen or self.sections.at(value) is None:
                continue  # an alias of an object already taken, or an absolute symbol
            seen.add(value)
            self._node(Node(_name(strtab, name), "data", value, size))

    def _add_slots(self) -> None:
        """PLT entries and GOT slots: nodes of their own, so that a call through one PLT
        entry reaches the one function its GOT slot holds, not every function in the PLT."""
        for low, high, name, _, _, _, _ in self.sections.named(_PLT_SECTIONS):
            for address in range(low, high, PLT_ENTRY):
                self._node(Node(f"{name}+{address - low:#x}", "plt", address, min(PLT_ENTRY, high - address)))
        for low, high, name, _, _, _, _ in self.sections.named(_GOT_SECTIONS):
            for address in range(low, high, 8):
                self._node(Node(f"{name}+{address - low:#x}", "got", address, 8))

    def node_at(self, address: int) -> int | None:
        """The node whose bytes hold `address`: a symbol's, else the stretch between two
        symbols of the section it lies in; None outside the object's sections."""
        if address in self.exact:
            return self.exact[address]
        i = bisect.bisect_right(self.bounded_starts, address) - 1
        if i >= 0:
            n = self.bounded[i]
            if address < self.nodes[n].address + self.nodes[n].size:
                return n
        section = self.sections.at(address)
        if section is None or section[2].startswith(_NOT_REFERENCES):
            return None
        key = (section[4], i)
        if key not in self.gaps:
            low = max(section[0], self.nodes[self.bounded[i]].address + self.nodes[self.bounded[i]].size) \
                if i >= 0 else section[0]
            high = self.bounded_starts[i + 1] if i + 1 < len(self.bounded_starts) else section[1]
            high = min(max(high, low), section[1])
            node = self._node(Node(f"{section[2]}+{low - section[0]:#x}", "unbounded", low, high - low))
            self.gaps[key] = node
            self.roots[node] = f"unbounded data in {section[2]}"
            if section[3]:
                self._decode(node)
        return self.gaps[key]

    def refer(self, source: int, address: int) -> None:
        target = self.node_at(address)
        if target is not None and target != source:
            self.refs[source].add(target)

    # -- code --

    def _decode(self, node: int) -> None:
        n = self.nodes[node]
        offset = self.obj.file_offset(n.address)
        if offset is None or n.size <= 0:
            return
        for start, size, mnemonic, operands in _decoder.disasm_lite(self.obj.read_at(offset, n.size), n.address):
            end = start + size
            if "rip" in operands:
                for sign, disp in _RIP.findall(operands):
                    self.refer(node, end + int(disp, 0) if sign == "+" else end - int(disp, 0))
            elif mnemonic.startswith(_BRANCHES) and operands.startswith("0x"):
                self.refer(node, int(operands, 16))
            elif self.position_dependent and "0x" in operands:
                for literal in _HEX.findall(operands):
                    value = int(literal, 16)
                    if value >= 0x1000 and self.sections.at(value) is not None:
                        self.refer(node, value)

    def add_code_refs(self) -> None:
        for node in list(self.node_of_function.values()) + [n for n, x in enumerate(self.nodes) if x.kind == "plt"]:
            self._decode(node)
        # Switch tables: a function's cold part is reached only through its table.
        out_of_line = [self.index.functions[i] for i in sorted(self.node_of_function)]
        code_map = CodeMap(self.obj, out_of_line)
        for k, i in enumerate(sorted(self.node_of_function)):
            source = self.node_of_function[i]
            for target in code_map.jump_targets(k) or ():
                self.refer(source, target)

    # -- data --

    def add_relocation_refs(self) -> None:
        dynsym = _symbols(self.obj, ".dynsym")
        values = dynsym[0]["value"] if dynsym is not None else np.zeros(0, dtype="<u8")
        defined = dynsym[0]["shndx"] != 0 if dynsym is not None else np.zeros(0, dtype=bool)
        for section in self.obj.elf.iter_sections():
            if section.header.sh_type != "SHT_RELA" or not section.header.sh_flags & 0x2:
                continue
            relas = np.frombuffer(section.data(), dtype=_RELA)
            kind = (relas["info"] & 0xFFFFFFFF).astype(np.int64)
            sym = (relas["info"] >> np.uint64(32)).astype(np.int64)
            for location, k, s, addend in zip(relas["offset"].tolist(), kind.tolist(), sym.tolist(),
                                               relas["addend"].tolist()):
                if k in (R_RELATIVE, R_IRELATIVE):
                    target = addend
                elif k in (R_64, R_GLOB_DAT, R_JUMP_SLOT) and 0 < s < len(values) and defined[s]:
                    target = int(values[s]) + addend
                else:
                    continue
                source = self.node_at(location)
                if source is not None:
                    self.refer(source, target)
        # SHT_RELR (19): relative relocations packed as addresses and bitmaps, each slot
        # holding its own target, as `ld -z pack-relative-relocs` writes them (glibc 2.36).
        relr = [s for s in self.obj.elf.iter_sections() if s.header.sh_type in ("SHT_RELR", 19)]
        for section in relr:
            for location in _relr_locations(np.frombuffer(section.data(), dtype="<u8").tolist()):
                source = self.node_at(location)
                offset = self.obj.data_offset(location)
                if source is not None and offset is not None:
                    self.refer(source, int.from_bytes(self.obj.read_at(offset, 8), "little"))

    def add_absolute_pointer_refs(self) -> None:
        """Non-PIE: the linker wrote internal pointers without relocations; any aligned
        word of loaded data that holds an address of the object is taken as one."""
        if not self.position_dependent:
            return
        low = min(s[0] for s in self.sections.spans)
        high = max(s[1] for s in self.sections.spans)
        for start, end, name, executable, _, has_bits, file_offset in self.sections.spans:
            if executable or not has_bits or name.startswith(_NOT_REFERENCES):
                continue
            first = (start + 7) & ~7
            raw = self.obj.read_at(file_offset + first - start, max(0, end - first))
            words = np.frombuffer(raw[:len(raw) // 8 * 8], dtype="<u8")
            for k in np.flatnonzero((words >= low) & (words < high)).tolist():
                source = self.node_at(first + 8 * k)
                if source is not None:
                    self.refer(source, int(words[k]))

    # -- roots --

    def add_roots(self, symbols_from: ElfObject) -> None:
        entry = self.obj.elf.header.e_entry
        if entry and (node := self.node_at(entry)) is not None:
            self.roots[node] = "entry point"
        dynamic = self.obj.elf.get_section_by_name(".dynamic")
        if isinstance(dynamic, DynamicSection):
            for tag in dynamic.iter_tags():
                if tag.entry.d_tag in ("DT_INIT", "DT_FINI"):
                    node = self.node_at(tag.entry.d_val)
                    if node is not None:
                        self.roots[node] = "_init" if tag.entry.d_tag == "DT_INIT" else "_fini"
        for name in ("_init", "_fini"):
            for i, f in enumerate(self.index.functions):
                if f.name == name and i in self.node_of_function:
                    self.roots.setdefault(self.node_of_function[i], name)
        for low, high, name, _, _, _, _ in self.sections.named((".init_array", ".fini_array", ".preinit_array")):
            for slot in range(low, high, 8):
                node = self.node_at(slot)
                if node is not None:
                    self.roots[node] = name
        dynsym = _symbols(self.obj, ".dynsym")
        if dynsym is not None:
            records = dynsym[0]
            exported = records[(records["shndx"] != 0) & ((records["info"] >> 4) != STB_LOCAL)
                               & ~np.isin(records["other"] & 0x3, (STV_HIDDEN, STV_INTERNAL))
                               & np.isin(records["info"] & 0xF, (STT_OBJECT, STT_FUNC, STT_GNU_IFUNC))]
            for value in exported["value"].tolist():
                node = self.node_at(value)
                if node is not None:
                    self.roots.setdefault(node, "exported")


def reference_graph(path: str, index: ObjectIndex) -> ReferenceGraph:
    """The reference graph of the object at `path`, whose probe index is `index` (its
    functions are the graph's functions; its debug file, if any, names its data)."""
    with ElfObject(path) as obj:
        debug = ElfObject(index.debug_file) if index.debug_file else None
        try:
            symbols_from = debug if debug is not None and debug.has_symtab() else obj
            builder = _Builder(obj, index, symbols_from)
            builder.add_code_refs()
            builder.add_relocation_refs()
            builder.add_absolute_pointer_refs()
            builder.add_roots(symbols_from)
        finally:
            if debug is not None:
                debug.close()
    return ReferenceGraph(path, builder.nodes, builder.refs, builder.roots, builder.node_of_function)
