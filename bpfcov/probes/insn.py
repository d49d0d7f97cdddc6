"""Which instructions an x86-64 uprobe can sit on: the kernel's own rules, predicted.

The kernel decides when it installs a probe into a process that maps the file
(arch_uprobe_analyze_insn in arch/x86/kernel/uprobes.c, Linux 6.18), in this order:

1. The instruction must decode (its insn decoder; else ENOEXEC). Its opcode map lacks
   AMD's FMA4 and SSE4A's extrq/insertq, which capstone decodes (libm's *_fma4 code).
2. No ES, CS, SS, DS or LOCK prefix among the legacy prefixes (`is_prefix_bad`).
3. Not an instruction that masks exceptions: `mov` to %ss, `pop %ss`.
4. The first opcode byte must be set in `good_insns_64`. For VEX (c4, c5) and EVEX (62)
   instructions the decoder's first opcode byte is the byte *after* the prefix, so
   `vmovd` (c5 f9 6e) is judged as 0x6e, an `outs`, and refused, while the EVEX
   `vpbroadcastb` (62 .. 7a) is judged as 0x7a, a `jp`, and accepted. In 64-bit mode
   0x0f itself is "good", so every two-byte opcode passes (good_2byte_insns is consulted
   only in 32-bit mode).
5. A relative branch or call (e8, e9, eb, 7x, 0f 8x) with an operand-size (66) prefix.
And the uprobe core refuses an int3 already in place (prepare_uprobe).

Some instructions the kernel accepts and then runs wrongly: before single-stepping an
instruction it decides from the opcode byte alone whether to emulate it as a branch
(branch_setup_xol_ops, and insn_is_nop for nops), so a VEX `vpcmpeqb` (opcode 0x74) is
emulated as `je`, `vpor` (eb) as `jmp`, `vpsubsb` (e8) as `call`, `kmovw` (90) as a nop,
and the instruction itself never runs. Seen here: with line probes in glibc, python3 died
of SIGSEGV in __strrchr_avx2. bpfcov never probes these (`misemulation`), nor a `syscall`:
with one probed, a probe on the instruction after it never fires (seen on 6.18 with
libc's syscall(): the line after the instruction counted 0 of 5 runs).

These rules are a prediction: the kernel has the last word. When a link is refused anyway
(another kernel version, a decoder difference), the engine finds the refused probes by
bisection and moves or drops them (engine/tracer.py). What must never happen is a probe
the kernel silently ignores being reported as "never executed"; see docs/kernel-facts.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import capstone


def _opcode_set(rows: list[str]) -> frozenset[int]:
    """The opcodes marked 0 in a kernel table written as 16 rows of 16 digits."""
    return frozenset(row * 16 + col for row, digits in enumerate(rows) for col, d in enumerate(digits) if d == "0")


# good_insns_64 of arch/x86/kernel/uprobes.c, 0 where the kernel refuses the opcode.
REFUSED_OPCODES = _opcode_set([
    "1111110011111101",  # 00: 06 07 0e (0f escapes to two-byte opcodes: good)
    "1111110011111100",  # 10: 16 17 1e 1f
    "1111111011111110",  # 20: 27 2f
    "1111111011111110",  # 30: 37 3f
    "1111111111111111",  # 40
    "1111111111111111",  # 50
    "0001111111110000",  # 60: 60 61 62, 6c-6f (ins, outs)
    "1111111111111111",  # 70
    "1101111111111111",  # 80: 82
    "1111111111011111",  # 90: 9a (far call)
    "1111111111111111",  # a0
    "1111111111111111",  # b0
    "1111111111110000",  # c0: cc-cf (int3, int n, into, iret)
    "1111000111111111",  # d0: d4 d5 d6
    "1111000011010000",  # e0: e4-e7, ea, ec-ef (in, out, far jmp)
    "1011011111001111",  # f0: f1 (int1), f4 (hlt), fa fb (cli, sti)
])

# Legacy prefixes the decoder collects, and those is_prefix_bad() refuses.
LEGACY_PREFIXES = frozenset({0xF0, 0xF2, 0xF3, 0x2E, 0x36, 0x3E, 0x26, 0x64, 0x65, 0x66, 0x67})
REFUSED_PREFIXES = {0xF0: "lock", 0x26: "es", 0x2E: "cs", 0x36: "ss", 0x3E: "ds"}

# Bytes of VEX/EVEX prefixes, opcode map escape included (c5: 2, c4: 3, 62: 4).
_VEX_LENGTH = {0xC5: 2, 0xC4: 3, 0x62: 4}

# Relative branches whose operand-size override the kernel refuses (branch_setup_xol_ops).
_RELATIVE_BRANCHES = frozenset({0xE8, 0xE9, 0xEB, *range(0x70, 0x80)})

# VEX/EVEX opcode bytes the kernel takes for a branch or a nop and emulates as one.
_MISEMULATED_VEX_OPCODES = _RELATIVE_BRANCHES | {0x90}


@dataclass(frozen=True, slots=True)
class ProbeSite:
    address: int | None  # where to probe; None when nothing safe was found
    moved: bool
    note: str


_decoder = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
_decoder.detail = True

# Instructions capstone decodes that the kernel's decoder does not know (its opcode map,
# arch/x86/lib/x86-opcode-map.txt, has no entry): AMD's FMA4, at these opcodes of the VEX
# 0f3a map, and SSE4A's extrq/insertq (66 or f2, then 0f 78/79). Checked: tests/test_kernel_rules.py.
_FMA4_OPCODES = frozenset({*range(0x5C, 0x60), *range(0x68, 0x70), *range(0x78, 0x80)})

_BRANCH_GROUPS = {capstone.CS_GRP_JUMP, capstone.CS_GRP_CALL, capstone.CS_GRP_RET,
                  capstone.CS_GRP_INT, capstone.CS_GRP_IRET, capstone.CS_GRP_BRANCH_RELATIVE}


def _decode(raw: bytes, address: int = 0):
    return next(_decoder.disasm(raw[:15], address, 1), None)


def refusal(raw: bytes) -> str | None:
    """Why bpfcov must not probe the instruction at the start of `raw` (the kernel refuses
    it, or would run it wrongly), or None. `raw` holds at least the instruction (15 bytes)."""
    return kernel_refusal(raw) or misemulation(raw)


def _vex_opcode(code: bytes) -> int | None:
    """The opcode byte of a VEX or EVEX instruction, None for any other."""
    i = 0
    while i < len(code) and code[i] in LEGACY_PREFIXES:
        i += 1
    if i < len(code) and 0x40 <= code[i] <= 0x4F:
        i += 1
    if i < len(code) and code[i] in _VEX_LENGTH and i + _VEX_LENGTH[code[i]] < len(code):
        return code[i + _VEX_LENGTH[code[i]]]
    return None


def misemulation(raw: bytes) -> str | None:
    """Why the kernel, accepting a probe on this instruction, would not run it or what
    follows it as it should (see above)."""
    insn = _decode(raw)
    if insn is not None and insn.bytes[-2:] == b"\x0f\x05" and insn.mnemonic == "syscall":
        return "a probe on the instruction after a probed syscall never fires"
    op = _vex_opcode(bytes(insn.bytes)) if insn is not None else None
    if op in _MISEMULATED_VEX_OPCODES:
        return f"the kernel would emulate this VEX instruction (opcode {op:#04x}) as a branch or nop"
    return None


def kernel_refusal(raw: bytes) -> str | None:
    """Why the kernel refuses a uprobe on the instruction at the start of `raw`, or None
    if it takes it."""
    insn = _decode(raw)
    if insn is None:
        return "undecodable instruction"
    code = bytes(insn.bytes)
    i, prefixes = 0, []
    while i < len(code) and code[i] in LEGACY_PREFIXES:
        if code[i] in REFUSED_PREFIXES:
            return f"{REFUSED_PREFIXES[code[i]]} prefix"
        prefixes.append(code[i])
        i += 1
    if i < len(code) and 0x40 <= code[i] <= 0x4F:  # REX
        i += 1
    if i < len(code) and code[i] in _VEX_LENGTH:
        kind = {0xC5: "VEX", 0xC4: "VEX", 0x62: "EVEX"}[code[i]]
        vex_map = code[i + 1] & 0x1F if code[i] == 0xC4 and i + 1 < len(code) else None
        i += _VEX_LENGTH[code[i]]
        if i >= len(code):
            return "undecodable instruction"
        op = code[i]
        if vex_map == 3 and op in _FMA4_OPCODES:
            return "AMD FMA4 instruction, unknown to the kernel's decoder"
        return f"{kind} opcode {op:#04x}" if op in REFUSED_OPCODES else None
    if i >= len(code):
        return "undecodable instruction"
    op = code[i]
    second = code[i + 1] if i + 1 < len(code) else None
    if op == 0x17 or (op == 0x8E and i + 1 < len(code) and (code[i + 1] >> 3) & 7 == 2):
        return "moves to %ss"
    if op == 0x0F and second in (0x78, 0x79) and (0x66 in prefixes or 0xF2 in prefixes):
        return "SSE4A extrq/insertq, unknown to the kernel's decoder"
    if op in REFUSED_OPCODES:  # int3 (cc) among them
        return f"opcode {op:#04x}"
    relative_branch = op in _RELATIVE_BRANCHES or (op == 0x0F and second is not None and 0x80 <= second <= 0x8F)
    if relative_branch and 0x66 in prefixes:
        return "relative branch with an operand-size prefix"
    return None


def instruction_length(raw: bytes) -> int | None:
    insn = _decode(raw)
    return insn.size if insn is not None else None


def is_branch(raw: bytes) -> bool:
    insn = _decode(raw)
    return insn is not None and any(insn.group(g) for g in _BRANCH_GROUPS)


def find_probe_site(code: bytes, address: int) -> ProbeSite:
    """Where to probe a function whose first bytes are `code`, loaded at `address`.

    If the entry instruction is refused and is not a branch, the next instruction runs
    exactly when the entry does (unless something jumps to it), so it stands in for it.
    Otherwise there is no safe place and the function is unmeasured, never dead.
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
    return bool(code) and refusal(code[:15]) is None
