"""Real programs on a real host: glibc, libstdc++ and the Python interpreter with --libs,
processes outside the trace left untouched, and processes in other mount namespaces."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import ROOT, bpfcov, coverage_json, function_counts, gcov_counts, read_until_tracing, target

LIBC = "/usr/lib/x86_64-linux-gnu/libc.so.6"


def _object(report: dict, basename: str) -> dict:
    return next(o for o in report["objects"] if os.path.basename(o["path"]) == basename)


def _hit(obj: dict) -> set[str]:
    """Names of the executed functions, aliases included, without symbol versions."""
    return {name.split("@")[0] for f in obj["functions"] if f["status"] == "hit" for name in [f["name"], *f["aliases"]]}


def _subset(counts: dict, expected: dict) -> dict:
    return {name: counts.get(name) for name in expected}


def _stored(out) -> object:
    from bpfcov.data import store
    return store.read(str(out / "bpfcov.db"))


def _assert_refused_entries_never_dead(out) -> None:
    """Every function whose entry bpfcov must not probe was moved or is unmeasured."""
    from bpfcov.probes.insn import refusal
    from bpfcov.probes.model import ProbeStatus
    run = _stored(out)
    for obj in run.objects:
        with open(obj.index.path, "rb") as f:
            for fn in obj.index.functions:
                f.seek(fn.offset)
                if refusal(f.read(15)) is not None:
                    assert fn.probe is not ProbeStatus.ENTRY, f"{obj.index.path}: {fn.name}"
                if fn.probe is ProbeStatus.UNMEASURED:
                    assert fn.probe_note


def test_libs_covers_glibc_itself_on_the_sqlite_workload(bpf, tmp_path):
    out = tmp_path / "out"
    result = bpfcov("run", "-o", out, "--libs", "--", ROOT / "sample_targets/build/sqlite/workload", "2000")
    report = coverage_json(out)
    libc = _hit(_object(report, "libc.so.6"))
    assert len(libc) >= 50
    assert {"malloc", "free", "__libc_start_main"} <= libc
    # glibc's AVX2 entries start with VEX instructions uprobes refuse: moved, never dead.
    assert "__memset_avx2_unaligned_erms" in {f["name"] for f in _object(report, "libc.so.6")["functions"]}
    _assert_refused_entries_never_dead(out)
    assert "moved" in result.stderr


def test_hit_mode_on_glibc_finds_what_count_mode_finds(bpf, tmp_path):
    runs = {}
    for mode in ("count", "hit"):
        bpfcov("run", "-q", "-o", tmp_path / mode, "--libs", "--mode", mode, "--format", "json", "--",
               target("O0", "shapes"), "area", "circle", "2")
        runs[mode] = _hit(_object(coverage_json(tmp_path / mode), "libc.so.6"))
    assert runs["hit"] == runs["count"] and len(runs["count"]) >= 30


def test_attach_with_libs_covers_glibc_in_a_running_interpreter(bpf, tmp_path):
    """A Python interpreter that runs each line it reads: attached to while it waits."""
    proc = subprocess.Popen(["/usr/bin/python3", "-c", "import sys\nfor line in sys.stdin: exec(line)"],
                            stdin=subprocess.PIPE, text=True)
    out = tmp_path / "out"
    try:
        tracer = subprocess.Popen([sys.executable, "-m", "bpfcov", "attach", "--pid", str(proc.pid), "--libs",
                                   "-o", out], stderr=subprocess.PIPE, text=True)
        read_until_tracing(tracer)
        proc.stdin.write("import json, re, os, zlib; json.dumps({'a': [1.5, 'x']}); re.sub('a+', 'b', 'caat')\n")
        proc.stdin.write("os.listdir('/'); zlib.compress(b'x' * 1000); "
                         "print(sorted(os.environ)[:1], file=sys.stderr)\n")
        proc.stdin.close()
        proc.wait(timeout=60)
        assert tracer.wait(timeout=120) == 0, tracer.stderr.read()
    finally:
        proc.kill()
    report = coverage_json(out)
    libc = _hit(_object(report, "libc.so.6"))
    assert len(libc) >= 50 and {"malloc", "opendir", "readdir64"} <= libc
    assert "main" not in _hit(_object(report, "python3.11"))  # it ran before the attach
    _assert_refused_entries_never_dead(out)


def test_libs_on_a_cxx_program_covers_libstdcxx_and_keeps_gcov_counts(bpf, tmp_path):
    oracle = gcov_counts(target("gcov", "inventory"), ["total"], tmp_path)
    out = tmp_path / "out"
    bpfcov("run", "-q", "-o", out, "--libs", "--mode", "count", "--", target("O0", "inventory"), "total")
    report = coverage_json(out)
    ours = function_counts(report, "inventory")
    compared = [name for name in oracle if name in ours]
    assert len(compared) >= 5 and all(ours[n] == oracle[n] for n in compared)
    libstdcxx = next(o for o in report["objects"] if "libstdc++" in o["path"])
    assert "_Znwm" in _hit(libstdcxx)  # operator new
    assert len(_hit(_object(report, "libc.so.6"))) >= 20


EXTENSION = """\
#define PY_SSIZE_T_CLEAN
#include <Python.h>

static long twice_of(long x) { return 2 * x; }

static PyObject *twice(PyObject *self, PyObject *args) {
    long x;
    if (!PyArg_ParseTuple(args, "l", &x)) return NULL;
    return PyLong_FromLong(twice_of(x));
}

static PyObject *never_called(PyObject *self, PyObject *args) { Py_RETURN_NONE; }

static PyMethodDef methods[] = {
    {"twice", twice, METH_VARARGS, ""}, {"never_called", never_called, METH_NOARGS, ""}, {NULL}};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "ext", NULL, -1, methods};
PyMODINIT_FUNC PyInit_ext(void) { return PyModule_Create(&module); }
"""


def test_libs_on_the_python_interpreter_covers_a_c_extension_and_glibc(bpf, tmp_path):
    source = tmp_path / "ext.c"
    source.write_text(EXTENSION)
    include = subprocess.run(["/usr/bin/python3", "-c", "import sysconfig; print(sysconfig.get_paths()['include'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    subprocess.run(["gcc", "-shared", "-fPIC", "-g", "-O0", f"-I{include}", "-o", tmp_path / "ext.so", source],
                   check=True)
    out = tmp_path / "out"
    code = f"import sys; sys.path.insert(0, {str(tmp_path)!r}); import ext; print(sum(ext.twice(i) for i in range(5)))"
    result = bpfcov("run", "-q", "-o", out, "--libs", "--mode", "count", "--", "/usr/bin/python3", "-c", code)
    assert result.stdout == "20\n"
    report = coverage_json(out)
    expected = {"twice": 5, "twice_of": 5, "never_called": 0, "PyInit_ext": 1}
    assert _subset(function_counts(report, "ext.so"), expected) == expected
    assert len(_hit(_object(report, "libc.so.6"))) >= 50
    assert "Py_BytesMain" in _hit(_object(report, "python3.11"))  # the interpreter's main


def test_a_command_without_symbols_is_a_launcher_with_libs(bpf, tmp_path):
    result = bpfcov("run", "-o", tmp_path / "out", "--libs", "--", "/usr/bin/sleep", "0.1")
    assert "warning" in result.stderr and "no function symbols" in result.stderr
    assert any("nanosleep" in name for name in _hit(_object(coverage_json(tmp_path / "out"), "libc.so.6")))
    # Without --libs, a launcher with nothing under it to probe says so, and exits as it did.
    alone = bpfcov("run", "-o", tmp_path / "out2", "--", "/usr/bin/sleep", "0.1")
    assert "no function symbols" in alone.stderr and "nothing was probed" in alone.stderr


def _code_byte(pid: int, path: str, file_offset: int) -> int:
    """The byte at `file_offset` of `path` as process `pid` sees it in its memory."""
    real = os.path.realpath(path)
    with open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            fields = line.split()
            if len(fields) < 6 or os.path.realpath(fields[5]) != real:
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            offset = int(fields[2], 16)
            if offset <= file_offset < offset + (end - start):
                with open(f"/proc/{pid}/mem", "rb") as mem:
                    mem.seek(start + file_offset - offset)
                    return mem.read(1)[0]
    raise AssertionError(f"{path} offset {file_offset:#x} is not mapped by {pid}")


def test_processes_outside_the_trace_never_get_a_breakpoint(bpf, tmp_path):
    """Count mode keeps every probe in place: the traced process has int3s at the entries
    of its functions and of libc's; another process running the same binary, and bpfcov's
    own interpreter, have none."""
    from bpfcov.probes.index import index_object
    shapes = target("O0", "shapes")
    entries = {f.name: f.probe_offset for f in index_object(shapes, quiet=True).functions}
    malloc = next(f.probe_offset for f in index_object(LIBC, quiet=True).functions if f.name == "malloc")
    outside = subprocess.Popen([shapes, "serve"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    tracer = subprocess.Popen([sys.executable, "-m", "bpfcov", "run", "--mode", "count", "--libs", "-o",
                               tmp_path / "out", "--", shapes, "serve"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        read_until_tracing(tracer)
        tracer.stdin.write(b"circle 1\n")
        tracer.stdin.flush()
        # Its answer shows it is past its start-up, so every library it maps has its links.
        assert tracer.stdout.readline() == b"3.142\n"
        traced = _wait_for_child(tracer.pid)
        for where, offset in ((shapes, entries["circle_area"]), (LIBC, malloc)):
            assert _code_byte(traced, where, offset) == 0xCC
            assert _code_byte(outside.pid, where, offset) != 0xCC
            assert _code_byte(tracer.pid, LIBC, malloc) != 0xCC  # bpfcov itself
    finally:
        for proc in (tracer, outside):
            proc.stdin.close()
        tracer.wait(timeout=60)
        outside.wait(timeout=10)


def _wait_for_child(parent: int, timeout: float = 30) -> int:
    import time
    deadline = time.time() + timeout
    while time.time() < deadline:
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    with open(f"/proc/{pid}/stat") as f:
                        fields = f.read().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[1]) == parent and fields[0] != "T":
                    return int(pid)
        time.sleep(0.05)
    raise AssertionError(f"no running child of {parent}")


def test_attach_to_a_process_in_another_mount_namespace(bpf, tmp_path):
    """The program lives on a tmpfs mounted only in the process's own mount namespace."""
    script = f"mount -t tmpfs none /mnt && cp {target('O0', 'shapes')} /mnt/sqdrv && exec /mnt/sqdrv serve"
    proc = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    out = tmp_path / "out"
    try:
        proc.stdin.write("circle 1\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == "3.142\n"  # by now it runs /mnt/sqdrv
        assert not os.path.exists("/mnt/sqdrv")
        tracer = subprocess.Popen([sys.executable, "-m", "bpfcov", "attach", "--pid", str(proc.pid), "--mode",
                                   "count", "-o", out], stderr=subprocess.PIPE, text=True)
        read_until_tracing(tracer)
        proc.stdin.write("square 2\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == "4.000\n"
        proc.stdin.close()
        proc.wait(timeout=30)
        assert tracer.wait(timeout=60) == 0
    finally:
        proc.kill()
    report = coverage_json(out)
    assert [o["path"] for o in report["objects"]] == ["/mnt/sqdrv"]
    counts = function_counts(report)
    assert counts["square_area"] == 1 and counts["circle_area"] == 0


def test_run_covers_a_library_opened_in_another_mount_namespace(bpf, tmp_path):
    """A plugin copied to a private tmpfs and dlopened there is covered under its own path."""
    script = (f"mount -t tmpfs none /mnt && cp {target('O0', 'plugin.so')} /mnt/plugin.so && "
              f"exec {target('O0', 'host')} /mnt/plugin.so 3")
    out = tmp_path / "out"
    bpfcov("run", "-q", "-o", out, "--libs", "--mode", "count", "--",
           "unshare", "-m", "--propagation", "private", "sh", "-c", script)
    report = coverage_json(out)
    expected = {"plugin_run": 3, "plugin_never": 0}
    assert _subset(function_counts(report, "plugin.so"), expected) == expected
    assert "/mnt/plugin.so" in [o["path"] for o in report["objects"]]



def test_tracefs_is_mounted_when_missing(bpf, tmp_path):
    """A fresh machine may not mount tracefs; bcc needs it for the fork and exec tracepoints."""
    out = tmp_path / "out"
    script = (f"umount /sys/kernel/tracing 2>/dev/null; test ! -d /sys/kernel/tracing/events && "
              f"{sys.executable} -m bpfcov run -q -o {out} --mode count -- {target('O0', 'forker')} 2")
    result = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert function_counts(coverage_json(out))["worker_task"] == 2
