"""Which instructions an x86-64 uprobe can sit on.

The kernel decodes the probed instruction when a process maps the file and refuses some
(arch/x86/kernel/uprobes.c; see docs/kernel-facts.md): any with a LOCK or ES/CS/SS/DS
segment-override prefix, an int3 already there, far calls and jumps, segment-register
moves, and a list of rare opcodes. Worse, when no process maps the file at attach time the
refusal is silent and the probe never fires, so bpfcov decodes every probe site itself
before attaching and never trusts the kernel to tell it.
"""

from __future__ import annotations

from dataclasses import dataclass

import capstone

# Prefix bytes the kernel refuses outright.
REFUSED_PREFIXES = {0xF0: "lock", 0x26: "es", 0x2E: "cs", 0x36: "ss", 0x3E: "ds"}

# One-byte opcodes absent from the kernel's 64-bit "good instructions" table.
REFUSED_OPCODES = {
    0x06, 0x07, 0x0E, 0x16, 0x17, 0x1E, 0x1F, 0x27, 0x2F, 0x37, 0x3F,  # invalid in 64-bit mode
    0x60, 0x61, 0x62,  # pusha/popa invalid; 0x62 is the EVEX escape
    0x8E,  # mov to a segment register (mov %ss)
    0x9A, 0xEA,  # far call / far jump
    0xCC, 0xCD, 0xCE, 0xF1,  # int3, int n, into, int1: breakpoints and traps
    0xD4, 0xD5, 0xD6,  # aam, aad, salc
    0xF4,  # hlt
}

# Two-byte (0x0f xx) opcodes the kernel refuses: system instructions and undefined ones.
REFUSED_0F_OPCODES = {
    0x00, 0x01, 0x04, 0x06, 0x07, 0x08, 0x09, 0x0A, 0x0B, 0x0C, 0x0E, 0x0F,
    0x20, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27,
    0x30, 0x32, 0x33, 0x34, 0x35, 0x36, 0x37, 0x39, 0x3B, 0x3C, 0x3D, 0x3E, 0x3F,
    0x78, 0x79, 0x7A, 0x7B, 0xA6, 0xA7, 0xAA, 0xB9, 0xFF,
}

LEGACY_PREFIXES = {0xF0, 0xF2, 0xF3, 0x2E, 0x36, 0x3E, 0x26, 0x64, 0x65, 0x66, 0x67}


@dataclass(frozen=True, slots=True)
class ProbeSite:
    address: int | None  # where to probe; None when nothing safe was found
    moved: bool
    note: str


_decoder = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
_decoder.detail = True

_BRANCH_GROUPS = {capstone.CS_GRP_JUMP, capstone.CS_GRP_CALL, capstone.CS_GRP_RET,
                  capstone.CS_GRP_INT, capstone.CS_GRP_IRET, capstone.CS_GRP_BRANCH_RELATIVE}


def refusal(raw: bytes) -> str | None:
    """Why uprobes refuse the instruction whose bytes are `raw`, or None if they take it."""
    i = 0
    while i < len(raw) and raw[i] in LEGACY_PREFIXES:
        if raw[i] in REFUSED_PREFIXES:
            return f"{REFUSED_PREFIXES[raw[i]]} prefix"
        i += 1
    while i < len(raw) and 0x40 <= raw[i] <= 0x4F:  # REX
        i += 1
    if i >= len(raw):
        return "undecodable instruction"
    op = raw[i]
    if op in REFUSED_OPCODES:
        return f"opcode {op:#04x}"
    if op == 0x0F and i + 1 < len(raw) and raw[i + 1] in REFUSED_0F_OPCODES:
        return f"opcode 0x0f {raw[i + 1]:#04x}"
    return None


def find_probe_site(code: bytes, address: int) -> ProbeSite:
    """Where to probe a function whose first bytes are `code`, loaded at `address`.

    If the entry instruction is refused and is not a branch, the next instruction runs
    exactly when the entry does, so it stands in for it. Otherwise there is no safe place.
    """
    decoded = list(_decoder.disasm(code[:32], address, 2))
    if not decoded:
        return ProbeSite(None, False, "first instruction cannot be decoded")
    first = decoded[0]
    why = refusal(bytes(first.bytes))
    if why is None:
        return ProbeSite(address, False, "")
    if any(first.group(g) for g in _BRANCH_GROUPS):
        return ProbeSite(None, False, f"first instruction refused ({why}) and is a branch")
    if len(decoded) < 2:
        return ProbeSite(None, False, f"first instruction refused ({why}); no second instruction")
    second = decoded[1]
    why_second = refusal(bytes(second.bytes))
    if why_second is not None:
        return ProbeSite(None, False, f"first two instructions refused ({why}, {why_second})")
    return ProbeSite(second.address, True, f"first instruction refused ({why}); probed at +{second.address - address}")


def is_probeable(code: bytes) -> bool:
    """True when uprobes accept the instruction at the start of `code` (for line probes)."""
    return refusal(code[:15]) is None and bool(code)
