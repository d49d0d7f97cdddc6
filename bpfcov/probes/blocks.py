"""Basic blocks of an object's functions: which line probes can stand for others.

A basic block is a run of instructions that control enters only at its first and leaves
only after its last: when one of its instructions runs, all of them run, as often. So one
probe per block tells the count of every line whose address lies in the block, and the
others need no probe of their own (fewer probes means fewer traps and cheaper relinks).

A block begins (a *leader*) at a function's entry, after every instruction that transfers
control (jumps, returns, traps, and calls too, since a call may not return: exit, longjmp,
a C++ throw), and at every address a jump goes to. Direct jumps name their target; for an
indirect jump the targets must be found, or the function's lines keep their own probes:

- `jmp *GOT(%rip)` goes to another function's entry (a tail call through the GOT).
- A switch's jump table, as gcc and clang emit it for position-independent code:
  `lea T(%rip),%B; movslq (%B,%I,4),%R; add %B,%R; jmp *%R`. The table at T holds 32-bit
  offsets from T; it is read until an entry is not the start of an instruction.
- `jmp *T(,%I,8)`: a table of absolute addresses at T (code built without -fPIC).

Anything else (a computed goto, a call through a register turned tail call) leaves the
targets unknown, and the function unreduced. C++ landing pads are entered by the
unwinder, not by a jump: compilers give them no fall-through predecessor, so the
instruction before one always ends a block (a jump, a return, or a call that throws).
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field

import capstone
import numpy as np

from bpfcov.probes.elf import ElfObject
from bpfcov.probes.insn import is_probeable
from bpfcov.probes.model import Function

_decoder = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)

# Mnemonics after which the next instruction begins a block (a jump's own target is added
# separately). `j*` and `loop*` are jumps; `notrack jmp` is a jump with CET's prefix.
_ENDS_BLOCK = ("j", "loop", "notrack", "call", "ret", "iret", "ud", "hlt", "int", "syscall", "sysenter",
               "sysexit", "sysret", "xbegin", "xabort", "bnd jmp", "bnd ret", "rep ret", "repz ret")

_LEA_RIP = re.compile(r"^(\w+), \[rip ([+-]) (0x[0-9a-f]+|\d+)\]$")
_TABLE_LOAD = re.compile(r"^(\w+), dword ptr \[(\w+) \+ \w+\*4\]$")
_ABSOLUTE_TABLE = re.compile(r"^qword ptr \[\w+\*8 \+ (0x[0-9a-f]+)\]$")
_ADD = re.compile(r"^(\w+), (\w+)$")

# Jump table entries read at most (a switch over a byte has 256).
MAX_TABLE_ENTRIES = 1 << 16


@dataclass
class FunctionCode:
    """One function decoded from its start."""
    starts: np.ndarray                 # uint64, sorted: every instruction's address
    after_transfer: list[int]          # the address after each instruction that transfers control
    direct_targets: list[int]          # where its direct jumps go (possibly into another function)
    tables: list[tuple[int, int]] = field(default_factory=list)  # (table address, entry size)
    # False when decoding stopped before the function's end, or an indirect jump's
    # targets are unknown: nothing then says where control may enter.
    known_entries: bool = True


def _decode(code: bytes, address: int) -> FunctionCode:
    starts: list[int] = []
    after: list[int] = []
    direct: list[int] = []
    tables: list[tuple[int, int]] = []
    known = True
    lea_bases: dict[str, list[int]] = {}   # register -> tables a rip-relative lea put in it
    recent: list[tuple[str, str]] = []     # the last two instructions, for the switch pattern
    end = address
    for start, size, mnemonic, operands in _decoder.disasm_lite(code, address):
        starts.append(start)
        end = start + size
        if mnemonic == "lea":
            m = _LEA_RIP.match(operands)
            if m:
                disp = int(m.group(3), 0)
                lea_bases.setdefault(m.group(1), []).append(end + disp if m.group(2) == "+" else end - disp)
        if mnemonic.startswith(_ENDS_BLOCK):
            after.append(end)
            if mnemonic.endswith("jmp") or mnemonic[0] == "j" or mnemonic.startswith(("loop", "xbegin")):
                try:
                    direct.append(int(operands, 16))
                except ValueError:
                    resolved = _indirect_tables(operands, recent, lea_bases)
                    if resolved is None:
                        known = False
                    else:
                        tables += resolved
        recent = [*recent[-1:], (mnemonic, operands)]
    if end != address + len(code):
        known = False  # bytes the decoder cannot read: the rest of the function is unknown
    return FunctionCode(np.array(starts, dtype=np.uint64), after, direct, tables, known)


def _indirect_tables(operands: str, recent: list[tuple[str, str]],
                     lea_bases: dict[str, list[int]]) -> list[tuple[int, int]] | None:
    """The jump tables an indirect jump reads ([] for a tail call through the GOT), or
    None when its targets are unknown. `recent`: the instructions just before it."""
    if operands.startswith("qword ptr [rip "):
        return []
    m = _ABSOLUTE_TABLE.match(operands)
    if m:
        return [(int(m.group(1), 16), 8)]
    if len(recent) < 2 or not re.fullmatch(r"\w+", operands):
        return None
    target = operands
    (before, before_ops), (add, add_ops) = recent[-2:]
    added = _ADD.match(add_ops) if add == "add" else None
    if added is None or added.group(1) != target:
        return None
    base = added.group(2)
    if before == "lea":
        # gcc -O0: the table's address is loaded just before it is added.
        lea = _LEA_RIP.match(before_ops)
        if lea is None or lea.group(1) != base:
            return None
        return [(lea_bases[base][-1], 4)]
    loaded = _TABLE_LOAD.match(before_ops) if before == "movsxd" else None
    if loaded is None or loaded.group(1) != target or loaded.group(2) != base or base not in lea_bases:
        return None
    return [(table, 4) for table in lea_bases[base]]


class CodeMap:
    """The functions of an object (sorted by address), each decoded when first asked."""

    def __init__(self, obj: ElfObject, functions: list[Function], share_blocks: bool = True):
        """`share_blocks`: False to have every instruction tell its own count (teller)."""
        self.obj = obj
        self.share_blocks = share_blocks
        self.functions = functions
        self.starts = [f.address for f in functions]
        self._code: dict[int, FunctionCode] = {}
        self._targets: dict[int, list[int] | None] = {}
        self._leaders: dict[int, np.ndarray] | None = None  # per function whose blocks are known
        self._tellers: dict[int, int | None] = {}            # block leader -> its teller

    def holder(self, address: int) -> int | None:
        """The index of the function whose code holds `address`."""
        i = bisect.bisect_right(self.starts, address) - 1
        if i < 0 or address >= self.functions[i].address + self.functions[i].size:
            return None
        return i

    def code(self, i: int) -> FunctionCode:
        if i not in self._code:
            f = self.functions[i]
            self._code[i] = _decode(self.obj.read_at(f.offset, f.size), f.address)
        return self._code[i]

    def is_instruction(self, address: int) -> bool:
        """Whether an instruction of some function begins at `address`."""
        i = self.holder(address)
        if i is None:
            return False
        starts = self.code(i).starts
        k = int(np.searchsorted(starts, address))
        return k < len(starts) and int(starts[k]) == address

    def jump_targets(self, i: int) -> list[int] | None:
        """Every address function `i`'s jumps may go to, or None when some are unknown."""
        if i not in self._targets:
            code = self.code(i)
            targets: list[int] | None = None
            if code.known_entries:
                targets = list(code.direct_targets)
                for table, entry_size in code.tables:
                    targets += self._table_entries(table, entry_size)
            self._targets[i] = targets
        return self._targets[i]

    def _table_entries(self, table: int, entry_size: int) -> list[int]:
        """The targets of a jump table, read until an entry is not an instruction's start."""
        offset = self.obj.data_offset(table)
        if offset is None:
            return []
        targets: list[int] = []
        chunk = 256
        for first in range(0, MAX_TABLE_ENTRIES, chunk):
            raw = self.obj.read_at(offset + first * entry_size, chunk * entry_size)
            values = np.frombuffer(raw[:len(raw) // entry_size * entry_size], dtype="<i4" if entry_size == 4 else "<u8")
            for value in values.tolist():
                target = table + value if entry_size == 4 else value
                if not self.is_instruction(target):
                    return targets
                targets.append(target)
            if len(values) < chunk:
                break
        return targets

    def teller(self, address: int) -> int | None:
        """Where one probe tells how often the instruction at `address` ran: the first
        instruction uprobes take in its basic block. `address` itself where the blocks of
        its function are unknown; None when no instruction of its block can be probed."""
        i = self.holder(address) if self.share_blocks else None
        leaders = self.leaders().get(i) if i is not None else None
        if i is None or leaders is None:
            return address
        leader = int(leaders[np.searchsorted(leaders, address, side="right") - 1])
        if leader not in self._tellers:
            self._tellers[leader] = self._first_probeable(i, leader, leaders)
        return self._tellers[leader]

    def _first_probeable(self, i: int, leader: int, leaders: np.ndarray) -> int | None:
        starts = self.code(i).starts
        k = int(np.searchsorted(leaders, leader, side="right"))
        end = int(leaders[k]) if k < len(leaders) else self.functions[i].address + self.functions[i].size
        first = int(np.searchsorted(starts, leader))
        for address in starts[first:np.searchsorted(starts, end)].tolist():
            offset = self.obj.file_offset(address)
            if offset is not None and is_probeable(self.obj.read_at(offset, 15)):
                return address
        return None

    def leaders(self) -> dict[int, np.ndarray]:
        """Sorted block leaders of each function whose blocks are known, from every
        function's jumps: a function's cold part (foo.cold) jumps back into its middle."""
        if self._leaders is not None:
            return self._leaders
        found: dict[int, set[int]] = {}
        unknown: set[str] = set()
        for i, f in enumerate(self.functions):
            if not f.out_of_line or f.size <= 0:
                continue
            targets = self.jump_targets(i)
            if targets is None:
                unknown.add(f.name)
                continue
            found.setdefault(i, set()).update((f.address, *self.code(i).after_transfer))
            for t in targets:
                holder = self.holder(t)
                if holder is not None:
                    found.setdefault(holder, set()).add(t)
        # A function whose indirect jumps are unknown may jump anywhere into itself, and
        # into its cold part, where gcc moves a switch's unlikely cases.
        self._leaders = {i: np.array(sorted(s), dtype=np.uint64) for i, s in found.items()
                         if self.functions[i].name not in unknown
                         and self.functions[i].name.split(".cold")[0] not in unknown}
        return self._leaders
