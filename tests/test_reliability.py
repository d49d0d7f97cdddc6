"""Reliability and security: faults in the target and in bpfcov, leaks, hostile binaries,
load, and fuzzed ELF files. Each test states the guarantee it checks."""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

from conftest import (
    ROOT,
    bpf_ids,
    bpf_leaks,
    bpfcov,
    coverage_json,
    function_counts,
    read_until_tracing,
    target,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bpfcov.errors import BpfcovError
from bpfcov.probes.index import index_object

REGRESSIONS = Path(__file__).parent / "fuzz_regressions"


# -- faults in the target ------------------------------------------------------------------

def test_crashing_target_keeps_its_coverage_and_its_signal(bpf, tmp_path):
    out = tmp_path / "out"
    result = bpfcov("run", "-q", "-o", out, "--mode", "count", "--", target("O0", "shapes"), "crash", check=False)
    assert result.returncode == -signal.SIGSEGV  # bpfcov dies of the same signal
    counts = function_counts(coverage_json(out))
    assert counts["factorial"] == 4 and counts["main"] == 1


def test_exit_from_a_thread_keeps_coverage(bpf, tmp_path):
    out = tmp_path / "out"
    result = bpfcov("run", "-q", "-o", out, "--mode", "count", "--", target("O0", "threads"), "3", "100000", "exit",
                    check=False)
    assert result.returncode == 3
    assert function_counts(coverage_json(out))["work"] >= 1


def test_exec_of_another_program_and_many_children(bpf, tmp_path):
    out = tmp_path / "out"
    bpfcov("run", "-q", "-o", out, "--mode", "count", "--", target("O0", "forker"), "1000", "exec", timeout=600)
    counts = function_counts(coverage_json(out))
    assert counts["worker_task"] == 1000 and counts["spawn"] == 1000


def test_output_passes_through_unchanged(bpf, tmp_path):
    direct = subprocess.run([target("O0", "inventory"), "list"], capture_output=True)
    traced = subprocess.run([sys.executable, "-m", "bpfcov", "run", "-q", "-o", tmp_path / "o", "--",
                             target("O0", "inventory"), "list"], capture_output=True)
    assert (traced.stdout, traced.stderr, traced.returncode) == (direct.stdout, direct.stderr, direct.returncode)


# -- faults in bpfcov ----------------------------------------------------------------------

def test_sighup_saves_and_detaches(bpf, tmp_path):
    before = bpf_ids()
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "bpfcov", "watch", target("O0", "shapes"), "-o", out],
                            stderr=subprocess.PIPE, text=True)
    try:
        read_until_tracing(proc)
        proc.send_signal(signal.SIGHUP)
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
    assert not bpf_leaks(before)
    assert (out / "bpfcov.db").exists()


def test_full_disk_gives_a_clear_error_and_leaves_nothing_attached(bpf, tmp_path):
    mount = tmp_path / "tiny"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", mount], check=True)
    try:
        before = bpf_ids()
        result = bpfcov("run", "-o", mount / "out", "--", target("O0", "inventory"), "list", check=False)
        assert result.returncode == 1
        assert re.search(r"^bpfcov: error: cannot write .*No space left on device", result.stderr, re.M)
        assert "Traceback" not in result.stderr
        assert not bpf_leaks(before)
        assert not [p for p in (mount / "out").iterdir() if p.name.endswith(".tmp")]  # no half file
    finally:
        subprocess.run(["umount", mount])


def test_hundred_runs_leave_no_links_programs_maps_or_fds(bpf, tmp_path):
    from bpfcov.engine.session import TraceOptions
    from bpfcov.engine.targets import trace_command
    before = bpf_ids()
    fds = len(os.listdir("/proc/self/fd"))
    for _ in range(100):
        traced = trace_command([target("O0", "shapes"), "fact", "3"], TraceOptions(quiet=True), [], False)
        assert traced.ending.exit_status == 0 and traced.coverage.objects[0].function_counts.max() >= 1
    assert not bpf_leaks(before)
    assert len(os.listdir("/proc/self/fd")) == fds


def test_pid_that_exits_during_attach(bpf, tmp_path):
    # A target with symbols, so that only its exit can stop the attach: it serves until
    # its input closes, 0.3 s from now.
    proc = subprocess.Popen([target("O0", "shapes"), "serve"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    threading.Timer(0.3, proc.stdin.close).start()
    result = bpfcov("attach", "--pid", proc.pid, "-o", tmp_path / "o", "--mode", "count", check=False)
    proc.wait()
    # Either it attached in time and ended with the process, or it said the process was gone.
    assert result.returncode == 0 or re.match(r"bpfcov: error: .*(exited|no process)", result.stderr)
    assert "Traceback" not in result.stderr


def test_stripped_executable_without_symbols(tmp_path):
    stripped = tmp_path / "shapes"
    subprocess.run(["objcopy", "--strip-all", target("O0", "shapes"), stripped], check=True)
    result = bpfcov("symbols", stripped, check=False)
    assert result.returncode == 1 and "no function symbols" in result.stderr


def test_conflicting_options(tmp_path):
    result = bpfcov("watch", target("O0", "shapes"), "--duration", "1", "--interval", "5", "-o", tmp_path, check=False)
    assert result.returncode == 2 and "--interval" in result.stderr and "--duration" in result.stderr


# -- hostile binaries ----------------------------------------------------------------------

HOSTILE_NAMES = ['<script>alert(1)</script>', 'a,b', "quote'q", 'back\\nslash', 'A' * 10_000]


def hostile_binary(tmp_path: Path) -> Path:
    """Functions with hostile names, overlapping and zero-size symbols, and DWARF line
    rows that place code in /etc/shadow, ../../etc/passwd and a name with a newline."""
    lines = [".text", '.file 1 "/etc/shadow"', '.file 2 "../../../../etc/passwd"', '.file 3 "evil\\nname.c"']
    for i, name in enumerate(HOSTILE_NAMES):
        q = '"' + name.replace("\\", "\\\\") + '"'
        lines += [f".globl {q}", f".type {q}, @function", f"{q}:", f".loc {i % 3 + 1} {i + 3}", "    push %rbp",
                  f".loc {i % 3 + 1} {i + 4}", "    pop %rbp", "    ret", f".size {q}, .-{q}"]
    lines += [".globl outer", ".type outer, @function", "outer:", "    nop",
              ".globl inner", ".type inner, @function", "inner:", "    nop", "    ret", ".size inner, .-inner",
              ".size outer, .-outer",
              ".globl zero", ".type zero, @function", "zero:", ".size zero, 0", "    ret",
              ".globl main", ".type main, @function", "main:"]
    for name in HOSTILE_NAMES:
        lines.append('    call "' + name.replace("\\", "\\\\") + '"')
    lines += ["    call outer", "    xor %eax, %eax", "    ret", ".size main, .-main",
              '.section .note.GNU-stack,"",@progbits']
    source = tmp_path / "hostile.s"
    source.write_text("\n".join(lines) + "\n")
    binary = tmp_path / "hostile-asm"
    subprocess.run(["gcc", "-o", binary, source], check=True, capture_output=True)
    return binary


def test_hostile_symbols_and_paths_keep_outputs_wellformed(bpf, tmp_path):
    binary = hostile_binary(tmp_path)
    out = tmp_path / "out"
    bpfcov("run", "-q", "-o", out, "--lines", "--format", "lcov,html,json,cobertura", "--source-root", tmp_path,
           "--", binary)
    report = coverage_json(out)
    names = {f["name"] for o in report["objects"] for f in o["functions"] if f["status"] == "hit"}
    assert set(HOSTILE_NAMES) | {"main", "outer"} <= names
    info = (out / "coverage.info").read_text()
    for line in info.splitlines():  # every record whole: no name or path split a line
        assert re.match(r"^(TN:|SF:.+|FN:\d+,[^,\s]+|FNDA:\d+,[^,\s]+|FNF:\d+|FNH:\d+|DA:\d+,\d+|LF:\d+|LH:\d+|"
                        r"end_of_record)$", line), line[:200]
    subprocess.run(["lcov", "--summary", out / "coverage.info"], check=True, capture_output=True)
    import xml.etree.ElementTree as ET
    ET.parse(out / "coverage.xml")
    html = "".join(p.read_text() for p in (out / "html").glob("*.html"))
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    for secret in ("/etc/shadow", "/etc/passwd"):
        with open(secret) as f:
            first = f.readline().strip()
        assert first and first not in html


def test_two_hundred_thousand_symbols(tmp_path):
    sys.path.insert(0, str(ROOT))
    from bench.many_functions import write
    source, binary = tmp_path / "many.s", tmp_path / "many"
    with open(source, "w") as f:
        write(200_000, f)
    subprocess.run(["gcc", "-o", binary, source], check=True)
    index = index_object(str(binary), use_cache=False, quiet=True)
    assert len([f for f in index.functions if f.name.startswith("fn_")]) == 200_000


# -- load ----------------------------------------------------------------------------------

def test_sixteen_threads_hammering_one_function_count_exactly(bpf, tmp_path):
    out = tmp_path / "out"
    bpfcov("run", "-q", "-o", out, "--mode", "count", "--", target("O2", "threads"), "16", "20000")
    assert function_counts(coverage_json(out))["work"] == 16 * 20000


def test_watch_finds_every_function_of_a_thousand_short_processes(bpf, tmp_path):
    binary = tmp_path / "forker"
    shutil.copy(target("O0", "forker"), binary)
    out = tmp_path / "out"
    watcher = subprocess.Popen([sys.executable, "-m", "bpfcov", "watch", binary, "-o", out, "--mode", "count"],
                               stderr=subprocess.PIPE, text=True)
    try:
        read_until_tracing(watcher)
        for _ in range(10):
            subprocess.run([binary, "100"], check=True, capture_output=True)
        watcher.send_signal(signal.SIGINT)
        assert watcher.wait(timeout=60) == 0
    finally:
        watcher.kill()
    counts = function_counts(coverage_json(out))
    assert counts["worker_task"] == 1000 and counts["main"] == 10 and counts["parent_summary"] == 10


# -- fuzzing -------------------------------------------------------------------------------

def _index_or_error(path: Path) -> None:
    """The guarantee under test: a file either indexes, or fails with BpfcovError."""
    try:
        index_object(str(path), lines=True, use_cache=False, quiet=True)
    except BpfcovError:
        pass


SEED = Path(target("O0", "shapes")).read_bytes() if (Path(__file__).parent.parent /
                                                     "sample_targets/build/O0/shapes").exists() else b""


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.tuples(st.integers(0, max(len(SEED) - 1, 0)), st.integers(0, 255)), min_size=1, max_size=12),
       st.integers(0, 2))
def test_fuzzed_binaries_never_crash_the_indexer(tmp_path_factory, mutations, region):
    data = bytearray(SEED)
    # Aim a third of the cases at the headers, where most of the structure is.
    for position, value in mutations:
        data[position if region else position % 4096] = value
    path = tmp_path_factory.mktemp("fuzz") / "mutant"
    path.write_bytes(bytes(data))
    try:
        _index_or_error(path)
    except Exception:
        REGRESSIONS.mkdir(exist_ok=True)
        shutil.copy(path, REGRESSIONS / f"crash-{random.getrandbits(32):08x}.bin")
        raise


def test_fuzz_regressions():
    """Malformed files kept from fuzzing (and written by hand to seed the corpus)."""
    cases = sorted(REGRESSIONS.glob("*.bin"))
    assert cases
    for case in cases:
        _index_or_error(case)
