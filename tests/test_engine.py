"""The engine against real processes, with gcov's call counts as the oracle for count mode
and count mode as the oracle for hit mode."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from conftest import (
    ATTACH_METHODS,
    ROOT,
    assert_counts_equal_gcov,
    bpf_ids,
    bpf_leaks,
    bpf_links_held_by,
    bpfcov,
    coverage_json,
    function_counts,
    gcov_counts,
    read_until_tracing,
    target,
)

from bpfcov.api import run as api_run
from bpfcov.errors import BpfcovError

GCOV_CASES = [
    ("shapes", ["fact", "6"]),
    ("shapes", ["area", "circle", "2"]),
    ("shapes", ["apply", "negate", "4"]),
    ("shapes", []),
    ("inventory", ["list"]),
    ("inventory", ["total"]),
    ("inventory", ["bad"]),
    ("threads", ["4", "2000"]),
    ("forker", ["5"]),
]


def traced(tmp_path, name, args, *options, flavour="O0", method="auto"):
    out = tmp_path / "out"
    bpfcov("run", "-q", "-o", out, "--attach-method", method, *options, "--", target(flavour, name), *args,
           check=False)
    return coverage_json(out)


# perf-event links are released one at a time, 30-100 ms each (perf_uprobe.py): inventory's
# 1,300 probes (libstdc++'s inlined code) take 45 s, so perf-event runs it with one input.
PERF_EVENT_SKIPS = [("inventory", ["total"]), ("inventory", ["bad"])]


def _by_method(cases):
    return [pytest.param(name, args, method, id=f"{method}-{name} {' '.join(args)}")
            for method in ATTACH_METHODS for name, args in cases
            if method != "perf-event" or (name, args) not in PERF_EVENT_SKIPS]


@pytest.mark.parametrize("name,args,attach_method", _by_method(GCOV_CASES))
def test_count_mode_equals_gcov_call_counts(bpf, tmp_path, name, args, attach_method):
    oracle = gcov_counts(target("gcov", name), args, tmp_path)
    assert oracle, "gcov produced no counts"
    ours = function_counts(traced(tmp_path, name, args, "--mode", "count", method=attach_method))
    assert assert_counts_equal_gcov(ours, oracle) >= 3


def test_threaded_counts_are_exact(bpf, tmp_path, attach_method):
    counts = function_counts(traced(tmp_path, "threads", ["8", "5000"], "--mode", "count", method=attach_method))
    assert counts["work"] == 8 * 5000
    assert counts["worker"] == 8


def test_forked_children_are_covered(bpf, tmp_path, attach_method):
    counts = function_counts(traced(tmp_path, "forker", ["7"], "--mode", "count", method=attach_method))
    assert counts["worker_task"] == 7  # runs only in the children
    assert counts["parent_summary"] == 1


def executed(report) -> set[str]:
    return {f"{o['path']}:{f['name']}" for o in report["objects"] for f in o["functions"] if f["status"] == "hit"}


HIT_CASES = GCOV_CASES + [("shapes", ["lock"]), ("forker", ["3", "exec"])]


@pytest.mark.parametrize("name,args", HIT_CASES, ids=[f"{n} {' '.join(a)}" for n, a in HIT_CASES])
def test_hit_mode_finds_the_same_functions_as_count_mode(bpf, tmp_path, name, args):
    count = executed(traced(tmp_path / "count", name, args, "--mode", "count"))
    hit = executed(traced(tmp_path / "hit", name, args, "--mode", "hit"))
    assert hit == count
    assert count


@pytest.mark.parametrize("name,args", [c for c in HIT_CASES if c not in PERF_EVENT_SKIPS],
                         ids=[f"{n} {' '.join(a)}" for n, a in HIT_CASES if (n, a) not in PERF_EVENT_SKIPS])
def test_perf_event_hit_mode_finds_what_uprobe_multi_finds(bpf, tmp_path, name, args):
    """The fallback for kernels before 6.6 removes each probe by closing its own perf
    event at its first hit, where uprobe_multi relinks: the same functions must be found."""
    runs = {}
    for method in ("uprobe-multi", "perf-event"):
        out = tmp_path / method
        result = bpfcov("run", "-o", out, "--attach-method", method, "--format", "json", "--",
                        target("O0", name), *args, check=False)
        assert f"(hit mode, {method} links)" in result.stderr
        runs[method] = coverage_json(out)
        assert runs[method]["attach_method"] == method
    assert executed(runs["perf-event"]) == executed(runs["uprobe-multi"])
    assert executed(runs["perf-event"])


def test_hit_mode_on_the_sqlite_workload_matches_count_mode(bpf, tmp_path):
    workload = str(ROOT / "sample_targets/build/sqlite/workload")
    runs = {}
    for mode in ("count", "hit"):
        out = tmp_path / mode
        bpfcov("run", "-q", "-o", out, "--mode", mode, "--format", "json", "--", workload, "3000")
        runs[mode] = executed(coverage_json(out))
    assert runs["hit"] == runs["count"]
    assert len(runs["hit"]) > 300


def test_perf_event_probes_beyond_the_open_file_limit_fail_before_attaching(bpf, tmp_path):
    """Each perf-event probe holds a descriptor. The sqlite workload has 17,000 probes
    (its inlined code included): under a hard limit of 8,192 that bpfcov cannot raise
    (no CAP_SYS_RESOURCE), the run stops with one line before anything is attached, and
    the workload never starts."""
    before = bpf_ids()
    workload = str(ROOT / "sample_targets/build/sqlite/workload")
    result = subprocess.run(["prlimit", "--nofile=8192:8192", "setpriv", "--bounding-set", "-sys_resource",
                             sys.executable, "-m", "bpfcov", "run", "-o", tmp_path / "out", "--attach-method",
                             "perf-event", "--", workload, "3000"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("bpfcov: error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "above the limit of 8,192" in errors[0] and "--include" in errors[0]
    assert int(errors[0].split("error: ")[1].split(" probes")[0].replace(",", "")) > 15_000
    assert "workload-seconds" not in result.stderr
    assert not bpf_leaks(before)


@pytest.mark.parametrize("mangling", ["legacy", "v0"])
def test_rust_program_is_covered(bpf, tmp_path, mangling):
    out = tmp_path / "out"
    bpfcov("run", "-q", "-o", out, "--mode", "count", "--", target("rust", f"rustdemo-{mangling}"), "5")
    shown = {f["display_name"]: f["count"] for o in coverage_json(out)["objects"] for f in o["functions"]}
    assert shown["main::geometry::sum_of_squares"] == 1
    assert shown["<main::Square as main::Shape>::area"] == 1  # through a trait object
    assert shown["main::geometry::never_called"] == 0


def test_moved_probe_counts_the_lock_prefixed_function(bpf, tmp_path, attach_method):
    report = traced(tmp_path, "shapes", ["lock"], "--mode", "count", method=attach_method)
    assert function_counts(report)["locked_increment"] == 3


def test_dlopened_plugin_and_linked_library_are_covered_with_libs(bpf, tmp_path, attach_method):
    host = target("O0", "host")
    plugin = target("O0", "plugin.so")
    out = tmp_path / "out"
    bpfcov("run", "-q", "-o", out, "--libs", "--mode", "count", "--attach-method", attach_method,
           "--include", "^(main|shape_|plugin_)",
           "--", host, plugin, "3")
    report = coverage_json(out)
    assert function_counts(report, "host")["main"] == 1
    assert function_counts(report, "libshape.so") == {"shape_sides": 1, "shape_unused": 0}
    assert function_counts(report, "plugin.so") == {"plugin_run": 3, "plugin_never": 0}


def test_run_passes_exit_status_and_output_through(bpf, tmp_path):
    result = bpfcov("run", "-q", "-o", tmp_path / "out", "--", target("O0", "shapes"), check=False)
    assert result.returncode == 2  # shapes' own usage error
    assert result.stderr.startswith("usage: shapes")
    result = bpfcov("run", "-q", "-o", tmp_path / "out", "--", target("O0", "shapes"), "fact", "5")
    assert result.stdout == "120\n"


def test_attach_covers_only_what_runs_after_attaching(bpf, tmp_path, attach_method):
    proc = subprocess.Popen([target("O0", "shapes"), "serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    try:
        proc.stdin.write("circle 1\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == "3.142\n"
        out = tmp_path / "out"
        tracer = subprocess.Popen([sys.executable, "-m", "bpfcov", "attach", "--pid", str(proc.pid), "-o", out,
                                   "--mode", "count", "--attach-method", attach_method],
                                  stderr=subprocess.PIPE, text=True)
        read_until_tracing(tracer)
        proc.stdin.write("square 2\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == "4.000\n"
        proc.stdin.close()
        proc.wait(timeout=30)
        assert tracer.wait(timeout=60) == 0  # ends by itself when the process exits
    finally:
        proc.kill()
    counts = function_counts(coverage_json(out))
    assert counts["square_area"] == 1
    assert counts["circle_area"] == 0  # ran before bpfcov attached
    assert counts["main"] == 0


def test_watch_covers_processes_started_after_it(bpf, tmp_path, attach_method):
    binary = tmp_path / "shapes"
    shutil.copy(target("O0", "shapes"), binary)  # a private copy: no other test's processes map it
    out = tmp_path / "out"
    watcher = subprocess.Popen([sys.executable, "-m", "bpfcov", "watch", str(binary), "-o", out, "--duration", "60",
                                "--attach-method", attach_method], stderr=subprocess.PIPE, text=True)
    try:
        read_until_tracing(watcher)
        assert subprocess.run([binary, "fact", "4"], capture_output=True, text=True).stdout == "24\n"
        subprocess.run([binary, "area", "square", "3"], capture_output=True, check=True)
        watcher.send_signal(signal.SIGINT)
        assert watcher.wait(timeout=60) == 0
    finally:
        watcher.kill()
    report = coverage_json(out)
    hit = {f["name"] for o in report["objects"] for f in o["functions"] if f["status"] == "hit"}
    assert {"main", "factorial"} <= hit
    assert "triangle_area" not in hit


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_mid_run_saves_everything_and_detaches(bpf, tmp_path, sig, attach_method):
    before = bpf_ids()
    out = tmp_path / "out"
    tracer = subprocess.Popen([sys.executable, "-m", "bpfcov", "run", "-o", out, "--mode", "count",
                               "--attach-method", attach_method, "--",
                               target("O0", "threads"), "2", "2000000000"], stderr=subprocess.PIPE, text=True)
    try:
        read_until_tracing(tracer)
        time.sleep(1.0)
        assert bpf_links_held_by(tracer.pid) > 0
        tracer.send_signal(sig)
        tracer.wait(timeout=60)
    finally:
        tracer.kill()
    assert not bpf_leaks(before)
    counts = function_counts(coverage_json(out))
    assert counts["work"] > 1000 and counts["worker"] == 2
    db = sqlite3.connect(out / "bpfcov.db")
    assert dict(db.execute("SELECT key, value FROM meta"))["complete"] == "1"


def test_killed_target_still_gives_its_coverage(bpf, tmp_path):
    out = tmp_path / "out"
    tracer = subprocess.Popen([sys.executable, "-m", "bpfcov", "run", "-o", out, "--", target("O0", "threads"),
                               "1", "2000000000"], stderr=subprocess.PIPE, text=True)
    try:
        read_until_tracing(tracer)
        time.sleep(1.0)
        child = next(p for p in os.listdir("/proc") if p.isdigit() and _parent(int(p)) == tracer.pid)
        os.kill(int(child), signal.SIGKILL)
        assert tracer.wait(timeout=60) == -signal.SIGKILL  # the target's fate passes through
    finally:
        tracer.kill()
    assert function_counts(coverage_json(out))["work"] >= 1


def _parent(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def test_interval_writes_snapshots_while_running(bpf, tmp_path):
    out = tmp_path / "out"
    tracer = subprocess.Popen([sys.executable, "-m", "bpfcov", "run", "-q", "-o", out, "--interval", "0.3",
                               "--mode", "count", "--", target("O0", "threads"), "1", "2000000000"])
    try:
        deadline = time.time() + 30
        while not (out / "bpfcov.db").exists() and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        from bpfcov.data import store
        snapshot = store.read(str(out / "bpfcov.db"))
        assert not snapshot.complete
    finally:
        tracer.send_signal(signal.SIGTERM)
        tracer.wait(timeout=60)
    assert store.read(str(out / "bpfcov.db")).complete


def test_children_are_caught_on_raw_syscalls_where_syscall_tracepoints_are_missing(bpf, monkeypatch):
    """Kernels built without syscalls:* tracepoints: the fork catch falls back to
    raw_syscalls:sys_exit. Forced here, on a kernel that has both."""
    from bpfcov.engine import program
    from bpfcov.engine.session import TraceOptions
    from bpfcov.engine.targets import trace_command
    monkeypatch.setattr(program, "_has_syscall_tracepoints", lambda: False)
    traced = trace_command([target("O0", "forker"), "4"], TraceOptions(mode="count", quiet=True), [], False)
    assert traced.ending.exit_status == 0
    counts = {f.name: int(c) for o in traced.coverage.objects for f, c in zip(o.index.functions, o.function_counts)}
    assert counts["worker_task"] == 4 and counts["parent_summary"] == 1


def test_the_attach_method_comes_from_the_config_file_the_api_or_the_kernel(bpf, tmp_path):
    """`attach-method` in [tool.bpfcov] and `attach_method=` in the API force a method; a
    wrong name is refused before anything is attached. auto takes what the kernel has."""
    shapes = target("O0", "shapes")
    (tmp_path / ".bpfcov.toml").write_text('attach-method = "perf-event"\n')
    result = bpfcov("run", "-o", "out", "--", shapes, "fact", "3", cwd=tmp_path)
    assert "(hit mode, perf-event links)" in result.stderr and "; perf-event links" in result.stderr
    (tmp_path / ".bpfcov.toml").write_text('attach-method = "kprobe"\n')
    result = bpfcov("run", "-o", "out", "--", shapes, "fact", "3", cwd=tmp_path, check=False)
    assert result.returncode == 1 and "attach-method must be auto or uprobe-multi or perf-event" in result.stderr
    coverage = api_run([shapes, "fact", "4"], attach_method="perf-event", mode="count")
    assert coverage.data.stats["attach_method"] == "perf-event"
    assert {f["name"]: f["count"] for f in coverage.functions()}["factorial"] == 4
    assert api_run([shapes, "fact", "4"]).data.stats["attach_method"] == "uprobe-multi"  # this kernel has it
    with pytest.raises(BpfcovError, match="unknown attach_method 'kprobe'"):
        api_run([shapes, "fact", "4"], attach_method="kprobe")


def _calls_new_functions_all_along(tmp_path, count: int, pause_us: int) -> str:
    """A program that calls `count` functions in turn, each eight times, pausing `pause_us`
    after each: a probe turns hot every pause, for count * pause_us."""
    source = tmp_path / "many.c"
    functions = "".join(f"__attribute__((noinline)) int f{i}(int x) {{ return x + {i}; }}\n" for i in range(count))
    table = ", ".join(f"f{i}" for i in range(count))
    source.write_text("#include <unistd.h>\n" + functions + f"int (*fs[])(int) = {{{table}}};\n"
                      "int main(void) { volatile int s = 0; for (;;) for (int i = 0; i < " + str(count) +
                      "; i++) { for (int k = 0; k < 8; k++) s += fs[i](k); usleep(" + str(pause_us) + "); } }\n")
    binary = tmp_path / "many"
    subprocess.run(["gcc", "-O0", "-g", "-o", binary, source], check=True)
    return str(binary)


def _voluntary_switches(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("voluntary_ctxt_switches:"))


def test_attach_ended_mid_run_leaves_no_process_stopped(bpf, tmp_path, attach_method):
    """Hit mode stops a process at a probe's hot hit while the probe is taken out. bpfcov
    ended while probes keep turning hot must leave the process running, as if never
    traced: not stopped, still making progress. (perf-event links are released one at a
    time, ~100 ms each: fewer functions there, for a second of hot probes all the same.)"""
    count, pause_us = (5000, 300) if attach_method == "uprobe-multi" else (300, 5000)
    proc = subprocess.Popen([_calls_new_functions_all_along(tmp_path, count, pause_us)])
    try:
        tracer = subprocess.Popen([sys.executable, "-m", "bpfcov", "attach", "--pid", str(proc.pid), "-o",
                                   tmp_path / "out", "--attach-method", attach_method],
                                  stderr=subprocess.PIPE, text=True)
        read_until_tracing(tracer)
        time.sleep(0.5)
        tracer.send_signal(signal.SIGINT)
        assert tracer.wait(timeout=120) == 0
        # Each pause is a voluntary context switch; a stopped process makes none. (CPU time
        # would not do: a second of this program is less than one clock tick of it.)
        switches_before = _voluntary_switches(proc.pid)
        for _ in range(20):
            with open(f"/proc/{proc.pid}/stat") as f:
                assert f.read().rsplit(")", 1)[1].split()[0] != "T", "left stopped"
            time.sleep(0.05)
        assert _voluntary_switches(proc.pid) - switches_before >= 20, "not making progress"
    finally:
        proc.kill()
        proc.wait()
    report = coverage_json(tmp_path / "out")
    assert len({f["name"] for o in report["objects"] for f in o["functions"] if f["status"] == "hit"}) > 50


def test_the_recorded_peak_memory_is_bpfcovs_own_not_its_parents(bpf, tmp_path):
    """A test runner that starts bpfcov may itself hold gigabytes. Linux carries
    getrusage's ru_maxrss across fork and exec, so that figure would be the parent's;
    the run's own peak must be recorded."""
    ballast = b"\x01" * (2 << 30)  # 2 GiB, every page touched, held while bpfcov runs
    out = tmp_path / "out"
    bpfcov("run", "-q", "-o", out, "--", target("O0", "shapes"), "fact", "3")
    del ballast
    from bpfcov.data import store
    peak = store.read(str(out / "bpfcov.db")).stats["peak_rss_kib"]
    assert 20 << 10 < peak < 1 << 20, f"{peak} KiB"
