"""The instruction model against the running kernel, which has the last word.

One generated object holds one function per instruction form: VEX in its 2- and 3-byte
forms, EVEX, each refused prefix, fs/gs, rep/repne/bnd, operand-size branches, an int3
already in place, system instructions. A process maps it; each function's entry is then
probed alone, with a link on that process (a uprobe_multi link, and a perf-event uprobe:
both attach methods), and the kernel's answer must be the model's.

Accepting is not enough: some VEX instructions the kernel accepts and then emulates as a
branch instead of running them. Those are executed under a probe, and must be exactly the
ones bpfcov refuses to probe."""

from __future__ import annotations

import subprocess
import textwrap

import numpy as np
import pytest
from conftest import ATTACH_METHODS

from bpfcov.probes.elf import ElfObject
from bpfcov.probes.insn import kernel_refusal, misemulation, refusal

# (function name, its first instruction in GNU assembler syntax)
FORMS = [
    ("push_rbp", "push %rbp"), ("push_r12", "push %r12"), ("rex_w_push", ".byte 0x48, 0x55"),
    ("endbr64", "endbr64"), ("mov_reg", "mov %rdi,%rax"), ("sub_rsp", "sub $8,%rsp"),
    ("movabs", "movabs $0x1122334455667788,%rax"), ("lea_rip", "lea 0(%rip),%rax"),
    ("jmp_short", "jmp 1f\n1:"), ("jmp_near", ".byte 0xe9, 0, 0, 0, 0"), ("call_rel", "call 1f\n1:"),
    ("jcc_short", "je 1f\n1:"), ("jcc_near", ".byte 0x0f, 0x84, 0, 0, 0, 0"), ("jmp_indirect", "jmp *%rax"),
    ("call_rip", "call *0(%rip)"), ("ret", "ret"), ("nop", "nop"), ("nopw", "nopw 0x0(%rax,%rax,1)"),
    ("cs_nopw", "cs nopw 0x0(%rax,%rax,1)"), ("cs_nopw10", ".byte 0x66, 0x2e, 0x0f, 0x1f, 0x84, 0, 0, 0, 0, 0"),
    ("lock_inc", "lock incl (%rdi)"), ("es_mov", ".byte 0x26, 0x8b, 0x07"), ("cs_mov", "cs movl (%rdi),%eax"),
    ("ss_mov", ".byte 0x36, 0x8b, 0x07"), ("ds_mov", "ds movl (%rdi),%eax"), ("notrack_jmp", "notrack jmp *%rax"),
    ("fs_mov", "mov %fs:0x10,%rcx"), ("gs_mov", "mov %gs:0x0,%rax"), ("rep_stosb", "rep stosb"),
    ("repne_scasb", "repne scasb"), ("bnd_jmp", "bnd jmp *%rax"), ("f2_jmp", ".byte 0xf2, 0xff, 0xe0"),
    ("data16_call", ".byte 0x66, 0xe8, 0, 0, 0, 0"), ("data16_jcc", ".byte 0x66, 0x74, 0x00"),
    ("data16_jmp", ".byte 0x66, 0xeb, 0x00"), ("data16_mov", "mov %ax,(%rdi)"),
    ("addr32_mov", "addr32 mov (%edi),%eax"),
    ("mov_ss", "mov %eax,%ss"), ("pop_ss", ".byte 0x17"), ("int3", "int3"), ("int80", "int $0x80"), ("hlt", "hlt"),
    ("in_al", "in $0x60,%al"), ("outsb", "outsb"), ("cli", "cli"), ("iretq", "iretq"), ("lcall", "lcall *(%rax)"),
    ("syscall", "syscall"), ("ud2", "ud2"), ("cpuid", "cpuid"), ("rdtsc", "rdtsc"), ("xgetbv", "xgetbv"),
    ("pushf", "pushf"), ("popf", "popf"), ("enter", "enter $0,$0"), ("leave", "leave"), ("fld1", "fld1"),
    ("xchg_mem", "xchg %eax,(%rdi)"), ("cmpxchg", "cmpxchg %ecx,(%rdi)"), ("xbegin", "xbegin 1f\n1:"),
    ("vex2_vmovd", "vmovd %esi,%xmm0"), ("vex2_vpxor", "vpxor %xmm0,%xmm0,%xmm0"), ("vex2_vzeroupper", "vzeroupper"),
    ("vex2_vpcmpeqb", "vpcmpeqb %ymm1,%ymm0,%ymm2"), ("vex2_vmovdqu", "vmovdqu (%rdi),%ymm0"),
    ("vex3_vpbroadcastb", "vpbroadcastb %xmm0,%ymm0"), ("vex3_vmovdqu", "vmovdqu (%r8),%ymm8"),
    ("vex3_andn", "andn %eax,%ebx,%ecx"), ("evex_vpbroadcastb", "vpbroadcastb %esi,%ymm16"),
    ("evex_vmovdqu64", "vmovdqu64 (%rdi),%zmm16"), ("evex_vpxorq", "vpxorq %zmm16,%zmm16,%zmm16"),
    ("evex_vpternlogd", "vpternlogd $0xff,%zmm16,%zmm16,%zmm16"),
    ("fma4_vfmaddsd", "vfmaddsd %xmm2,%xmm1,%xmm0,%xmm0"), ("fma4_vfmaddps", "vfmaddps %ymm2,%ymm1,%ymm0,%ymm0"),
    ("xop_vprotb", "vprotb $1,%xmm1,%xmm0"), ("tbm_blcfill", "blcfill %eax,%ebx"),
    ("sse4a_extrq", "extrq $1,$2,%xmm0"),
    ("sse4a_insertq", "insertq %xmm1,%xmm0"), ("sse4a_movntss", "movntss %xmm0,(%rdi)"),
    ("3dnow_pfadd", "pfadd %mm1,%mm0"),
]


@pytest.fixture(scope="module")
def forms_process(tmp_path_factory):
    """A running process that maps the object of instruction forms, waiting on stdin."""
    folder = tmp_path_factory.mktemp("forms")
    asm = ["\t.text"]
    for name, insn in FORMS:
        asm += [f"\t.globl f_{name}", f"\t.type f_{name},@function", "\t.p2align 4", f"f_{name}:",
                textwrap.indent(insn, "\t"), "\tret", f"\t.size f_{name}, .-f_{name}"]
    (folder / "forms.S").write_text("\n".join(asm) + "\n")
    (folder / "main.c").write_text("#include <unistd.h>\nint main(void) { char c; return read(0, &c, 1) < 0; }\n")
    binary = folder / "forms"
    subprocess.run(["gcc", "-o", binary, folder / "main.c", folder / "forms.S"], check=True)
    proc = subprocess.Popen([binary], stdin=subprocess.PIPE)
    yield str(binary), proc.pid
    proc.stdin.close()
    proc.wait(timeout=10)


def _entries(binary: str) -> dict[str, tuple[int, bytes]]:
    with ElfObject(binary) as obj:
        return {s.name[2:]: (obj.file_offset(s.address), obj.read_at(obj.file_offset(s.address), 15))
                for s in obj.function_symbols() if s.name.startswith("f_")}


@pytest.fixture(scope="module", params=ATTACH_METHODS)
def program(request):
    from bpfcov.engine.program import CounterProgram, ProgramOptions
    program = CounterProgram(256, ProgramOptions(hit_mode=False, attach_method=request.param))
    yield program
    program.close()


def test_the_model_predicts_what_the_running_kernel_probes(bpf, forms_process, program):
    from bpfcov.engine.tracer import REFUSALS
    from bpfcov.engine.uprobe_multi import LinkError
    binary, pid = forms_process
    entries = _entries(binary)
    assert len(entries) == len(FORMS)
    wrong = []
    for name, (offset, code) in sorted(entries.items()):
        try:
            fd = program.method.create_link(program.prog_fd, binary, np.array([offset], dtype=np.uint64),
                                            np.zeros(1, dtype=np.uint64), pid)
        except LinkError as e:
            assert e.errno in REFUSALS, (name, e)
            kernel = f"refused ({e.errno})"
        else:
            import os
            os.close(fd)
            kernel = "accepted"
        model = kernel_refusal(code)
        if (model is None) != (kernel == "accepted"):
            wrong.append(f"{name} ({code.hex()}): kernel {kernel}, model {model or 'accepted'}")
    assert not wrong, "\n".join(wrong)
    # The forms that matter most in real binaries, stated outright.
    verdicts = {name: kernel_refusal(code) is None for name, (_, code) in entries.items()}
    assert not verdicts["vex2_vmovd"] and not verdicts["lock_inc"] and not verdicts["notrack_jmp"]
    assert verdicts["evex_vpbroadcastb"] and verdicts["fs_mov"] and verdicts["f2_jmp"] and verdicts["endbr64"]


def test_a_refused_probe_never_sinks_its_link(bpf, forms_process, program):
    """Predictions aside, the tracer finds what the kernel refuses and attaches the rest."""
    from bpfcov.engine.tracer import Tracer
    binary, pid = forms_process
    entries = _entries(binary)
    names = sorted(entries)
    offsets = np.array([entries[n][0] for n in names], dtype=np.uint64)
    asked = []
    tracer = Tracer(program, shard_size=len(names), on_refused=lambda probe, offset: asked.append(probe))
    try:
        tracer.add_object("forms", binary, offsets, 0)
        assert tracer.attach(pid, "forms")
        live = np.concatenate([shard.live for shard in tracer.shards])
        refused = {names[i] for i in np.flatnonzero(~live)}
        assert refused == {n for n in names if kernel_refusal(entries[n][1]) is not None}
        assert sorted(asked) == sorted(names.index(n) for n in refused)
        held = sum(len(shard.links[pid].held) for shard in tracer.shards if pid in shard.links)
        assert held == len(names) - len(refused)
    finally:
        tracer.close()


# (form, CPU feature it needs, set-up instructions, the instruction under test): each
# computes a value in %xmm0 that the function returns in %eax.
EXECUTED = [
    ("vpor", "avx", "mov $1,%eax; vmovd %eax,%xmm1; mov $6,%eax; vmovd %eax,%xmm2", "vpor %xmm1,%xmm2,%xmm0"),
    ("vpcmpeqb", "avx", "mov $5,%eax; vmovd %eax,%xmm1; vmovd %eax,%xmm2", "vpcmpeqb %xmm1,%xmm2,%xmm0"),
    ("vpsubsb", "avx", "mov $3,%eax; vmovd %eax,%xmm1; mov $10,%eax; vmovd %eax,%xmm2", "vpsubsb %xmm1,%xmm2,%xmm0"),
    ("vpbroadcastb", "avx2", "mov $3,%eax; vmovd %eax,%xmm1", "vpbroadcastb %xmm1,%xmm0"),
    ("evex_vpbroadcastb", "avx512bw", "mov $3,%esi", "vpbroadcastb %esi,%xmm16\n\tvmovdqa64 %xmm16,%xmm0"),
    ("kmovw", "avx512f", "mov $9,%eax; kmovw %eax,%k1", "kmovw %k1,%k2\n\tkmovw %k2,%eax\n\tvmovd %eax,%xmm0"),
    ("vpaddd", "avx", "mov $2,%eax; vmovd %eax,%xmm1; mov $3,%eax; vmovd %eax,%xmm2", "vpaddd %xmm1,%xmm2,%xmm0"),
]


def _cpu_has(feature: str) -> bool:
    with open("/proc/cpuinfo") as f:
        return feature in next(line for line in f if line.startswith("flags")).split()


@pytest.fixture(scope="module")
def executed_forms(tmp_path_factory):
    """A program that runs the form named on each line of its input and prints the result."""
    folder = tmp_path_factory.mktemp("executed")
    forms = [f for f in EXECUTED if _cpu_has(f[1])]
    asm = ["\t.text"]
    for name, _, setup, insn in forms:
        asm += [f"\t.globl run_{name}, t_{name}", f"run_{name}:", "\tvpxor %xmm0,%xmm0,%xmm0",
                *("\t" + part.strip() for part in setup.split(";")), f"t_{name}:", f"\t{insn}",
                "\tvmovd %xmm0,%eax", "\tret"]
    (folder / "forms.S").write_text("\n".join(asm) + "\n")
    table = ", ".join(f'{{"{n}", run_{n}}}' for n, *_ in forms)
    (folder / "main.c").write_text(textwrap.dedent(f"""\
        #include <stdio.h>
        #include <string.h>
        {" ".join(f"unsigned run_{n}(void);" for n, *_ in forms)}
        static const struct {{ const char *name; unsigned (*run)(void); }} forms[] = {{ {table} }};
        int main(void) {{
            char line[64];
            while (fgets(line, sizeof line, stdin)) {{
                line[strcspn(line, "\\n")] = 0;
                for (unsigned i = 0; i < sizeof forms / sizeof forms[0]; i++)
                    if (!strcmp(line, forms[i].name)) printf("%u\\n", forms[i].run());
                fflush(stdout);
            }}
            return 0;
        }}"""))
    binary = folder / "executed"
    subprocess.run(["gcc", "-O1", "-o", binary, folder / "main.c", folder / "forms.S"], check=True)
    return str(binary), [f[0] for f in forms]


def _run_form(binary: str, name: str, probe_at: int | None, program) -> str:
    """The form's result in a fresh process, with a probe on its instruction if asked;
    the process's death shows as "died"."""
    import os

    proc = subprocess.Popen([binary], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    fd = None
    try:
        if probe_at is not None:
            fd = program.method.create_link(program.prog_fd, binary, np.array([probe_at], dtype=np.uint64),
                                            np.zeros(1, dtype=np.uint64), proc.pid)
        out, _ = proc.communicate(name + "\n", timeout=30)
    finally:
        if fd is not None:
            os.close(fd)
        proc.kill()
    return out.strip() if proc.returncode == 0 else "died"


def test_instructions_the_kernel_would_run_wrongly_are_never_probed(bpf, executed_forms, program):
    binary, names = executed_forms
    assert "vpaddd" in names and "vpor" in names, "the CPU has no AVX: nothing to check"
    with ElfObject(binary) as obj:
        symbols = obj.elf.get_section_by_name(".symtab").iter_symbols()
        sites = {s.name[2:]: obj.file_offset(s["st_value"]) for s in symbols if s.name.startswith("t_")}
        code = {name: obj.read_at(offset, 15) for name, offset in sites.items()}
    misrun, wrong = set(), []
    for name in names:
        plain = _run_form(binary, name, None, program)
        probed = _run_form(binary, name, sites[name], program)
        assert kernel_refusal(code[name]) is None, f"{name}: the kernel would refuse it: no test of running it"
        if probed != plain:
            misrun.add(name)
        if (probed != plain) != (misemulation(code[name]) is not None):
            wrong.append(f"{name} ({code[name][:6].hex()}): {plain} untraced, {probed} probed, "
                         f"model: {misemulation(code[name]) or 'safe'}")
    assert not wrong, "\n".join(wrong)
    assert "vpaddd" not in misrun and {"vpor", "vpcmpeqb"} <= misrun
    assert all(refusal(code[n]) is not None for n in misrun)
