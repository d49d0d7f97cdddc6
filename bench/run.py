"""bpfcov's benchmarks: every figure a ratio or a time measured within one run.

    .venv/bin/python bench/run.py            # the full set (make bench), under 15 minutes
    .venv/bin/python bench/run.py --quick    # tiny sizes, one run each: proves it works

Writes bench/RESULTS.md (a table for people) and bench/results.json (the same figures for
scripts). See bench/README.md for how to read them. Runs of the things compared are
interleaved (A B A B ...), so drifting machine load hits all of them alike, and the median
of the runs is reported with min and max.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.big_report import big_rows  # noqa: E402
from bench.big_report import markdown as big_markdown  # noqa: E402
from bench.figures import summarize  # noqa: E402  (needs ROOT on the path)
from bench.fleet import fleet_row  # noqa: E402
from bench.fleet import markdown as fleet_markdown  # noqa: E402
from bench.layout import layout_rows  # noqa: E402
from bench.layout import markdown as layout_markdown  # noqa: E402

WORKLOAD = ROOT / "sample_targets/build/sqlite/workload"
BPFCOV = [sys.executable, "-m", "bpfcov"]


def seconds_of(stderr: str) -> float:
    return float(re.search(r"workload-seconds: ([\d.]+)", stderr).group(1))


def kcov_binary() -> str | None:
    """kcov, to compare with: on PATH, or built (once, into bench/.kcov-build) from the
    source tree named by KCOV_SOURCE (it is not in Debian 12; see bench/README.md). None
    when neither is there."""
    found = shutil.which("kcov")
    if found:
        return found
    build = ROOT / "bench" / ".kcov-build"
    binary = build / "src" / "kcov"
    source = os.environ.get("KCOV_SOURCE")
    if not binary.exists() and (not source or not Path(source, "CMakeLists.txt").exists()):
        return None
    if not binary.exists():
        build.mkdir(parents=True, exist_ok=True)
        for step in (["cmake", "-DCMAKE_BUILD_TYPE=Release", source], ["make", "-j2", "kcov"]):
            result = subprocess.run(step, cwd=build, capture_output=True, text=True)
            if result.returncode != 0:
                print(f"bench: kcov did not build ({' '.join(step[:1])}): {result.stderr.strip()[-300:]}",
                      file=sys.stderr)
                return None
    return str(binary)


def run_workload(mode: str, n: int, out: Path) -> dict:
    """One run: the program's own time, the wall time, and bpfcov's stats."""
    shutil.rmtree(out, ignore_errors=True)
    if mode == "untraced":
        cmd = [str(WORKLOAD), str(n)]
    elif mode == "kcov":
        cmd = [str(kcov_binary()), f"--include-path={WORKLOAD.parent}", str(out), str(WORKLOAD), str(n)]
    elif mode == "callgrind":
        cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.callgrind", str(WORKLOAD), str(n)]
    else:
        extra = {"hit": [], "count": ["--mode", "count"], "lines": ["--lines"]}[mode]
        cmd = BPFCOV + ["run", "-q", "-o", str(out), "--format", "lcov,html,json", *extra, "--", str(WORKLOAD), str(n)]
    start = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"bench: {mode} N={n} failed:\n{result.stderr[-2000:]}")
    row = {"program_seconds": seconds_of(result.stderr), "wall_seconds": wall}
    if mode in TRACED_MODES:
        from bpfcov.data import store
        row["stats"] = store.read(str(out / "bpfcov.db")).stats
    return row


TRACED_MODES = ("hit", "count", "lines")
# What hit mode's stats say of the time probes keep trapping (tracer.removal_stats).
REMOVAL_STATS = ("removal_ms_p50", "removal_ms_p99", "hot_removal_ms_p50", "hot_removal_ms_p99",
                 "traps_after_first_hit", "traps_after_first_hit_p50", "traps_after_first_hit_p99")


def workload_rows(n: int, modes: list[str], runs: int, tmp: Path) -> dict:
    samples: dict[str, list[dict]] = {m: [] for m in modes}
    for _ in range(runs):
        for mode in modes:  # interleaved: A B C A B C ...
            samples[mode].append(run_workload(mode, n, tmp / f"{mode}-{n}"))
    base = statistics.median(r["program_seconds"] for r in samples["untraced"])
    base_wall = statistics.median(r["wall_seconds"] for r in samples["untraced"])
    rows = {}
    for mode, rs in samples.items():
        program = summarize([r["program_seconds"] for r in rs])
        wall = summarize([r["wall_seconds"] for r in rs])
        row = {"program": program, "wall": wall, "program_ratio": program["median"] / base,
               "wall_ratio": wall["median"] / base_wall,
               "fixed_cost_seconds": wall["median"] - program["median"]}
        if "stats" in rs[0]:
            for key in REMOVAL_STATS:
                if key in rs[0]["stats"]:
                    row[key] = statistics.median(r["stats"][key] for r in rs)
            row["relinks"] = statistics.median(r["stats"]["relinks"] for r in rs)
            row["relink_seconds"] = statistics.median(r["stats"]["relink_seconds"] for r in rs)
            row["probes"] = rs[0]["stats"]["probes"]
            row["probes_left"] = statistics.median(r["stats"]["probes_left"] for r in rs)
            row["peak_rss_mib"] = max(r["stats"]["peak_rss_kib"] for r in rs) / 1024
        rows[mode] = row
    return rows


PERF_EVENT_MOST_PROBES = 10_100


def attach_rows(counts: list[int], tmp: Path) -> list[dict]:
    """Attach and detach time of N probes on a synthesized many-function binary, with
    each attach method."""
    from bench.many_functions import write
    from bpfcov.engine.plan import plan_object
    from bpfcov.engine.program import CounterProgram, ProgramOptions
    from bpfcov.engine.session import check_links_fit, raise_fd_limit
    from bpfcov.engine.tracer import Tracer
    from bpfcov.probes.index import index_object
    rows = []
    for count in counts:
        asm, binary = tmp / f"many{count}.s", tmp / f"many{count}"
        with open(asm, "w") as f:
            write(count, f)
        subprocess.run(["gcc", "-o", binary, asm], check=True)
        start = time.perf_counter()
        index = index_object(str(binary), use_cache=False, quiet=True)
        cold = time.perf_counter() - start
        plan = plan_object(index, 0)
        # perf-event: a descriptor per probe (100,000 are over this VM's hard limit of
        # 20,000), and the kernel releases them one at a time (10,000 take minutes).
        for method in ("uprobe-multi", "perf-event") if count <= PERF_EVENT_MOST_PROBES else ("uprobe-multi",):
            program = CounterProgram(plan.probe_count, ProgramOptions(hit_mode=True, attach_method=method))
            tracer = Tracer(program)
            check_links_fit(-(-plan.probe_count // tracer.shard_size), plan.probe_count, raise_fd_limit()[1])
            start = time.perf_counter()
            tracer.add_object(index.path, index.path, plan.offsets, 0)
            tracer.attach(0, index.path)  # no process maps it: the registration alone
            attach = time.perf_counter() - start
            links = sum(len(shard.links) for shard in tracer.shards)
            start = time.perf_counter()
            tracer.close()
            detach = time.perf_counter() - start
            program.close()
            rows.append({"method": method, "probes": plan.probe_count, "links": links, "attach_seconds": attach,
                         "detach_seconds": detach, "index_seconds": cold})
    return rows


def per_hit_rows(calls: int, runs: int, tmp: Path) -> dict:
    """What one counted hit costs, against an empty BPF program on the same probes: a
    single-threaded loop calls `work` `calls` times under count mode."""
    from bpfcov.engine.plan import plan_object
    from bpfcov.engine.program import CounterProgram, ProgramOptions
    from bpfcov.engine.tracer import Tracer
    from bpfcov.probes.index import index_object
    binary = tmp / "threads"
    shutil.copy(ROOT / "sample_targets/build/O0/threads", binary)  # private: nothing else maps it
    plan = plan_object(index_object(str(binary), quiet=True), 0)

    def timed() -> float:
        start = time.perf_counter()
        subprocess.run([str(binary), "1", str(calls)], check=True, capture_output=True)
        return time.perf_counter() - start

    samples: dict[str, list[float]] = {"untraced": [], "empty": [], "count": []}
    counting = ProgramOptions(hit_mode=False)
    programs = {"empty": CounterProgram(plan.probe_count, counting, extra_cflags=("-DEMPTY_PROGRAM",)),
                "count": CounterProgram(plan.probe_count, counting)}
    try:
        for _ in range(runs):
            samples["untraced"].append(timed())
            for name, program in programs.items():
                tracer = Tracer(program)
                tracer.add_object("threads", str(binary), plan.offsets, 0)
                tracer.attach(0, "threads")  # every process: the timed one is started later
                samples[name].append(timed())
                tracer.close()
    finally:
        for program in programs.values():
            program.close()
    base = statistics.median(samples["untraced"])
    per_hit = {name: (statistics.median(samples[name]) - base) / calls * 1e6 for name in ("empty", "count")}
    return {"calls": calls, "runs": runs, "empty_us": per_hit["empty"], "count_us": per_hit["count"],
            "added_percent": 100.0 * (per_hit["count"] - per_hit["empty"]) / per_hit["empty"]}


REMOVAL_PROGRAM = r"""
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
__attribute__((noinline)) void work(void) { __asm__ volatile(""); }
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
int main(int argc, char **argv) {
    /* Call work() until 100,000 calls in a row run untrapped: the last trapped call is
       when the breakpoint left. A trap makes every call slow (~1 us); an interrupt makes
       one call slow now and then, so a call counts as trapped when the one before was
       slow too. */
    double limit = atof(argv[1]), start = now(), last_trapped = start;
    long untrapped = 0;
    int slow_before = 0;
    while (untrapped < 100000 && now() - start < limit) {
        double before = now();
        work();
        double after = now();
        int slow = after - before > 400e-9;
        if (slow && slow_before) { last_trapped = after; untrapped = 0; } else untrapped++;
        slow_before = slow;
    }
    fprintf(stderr, "removal-seconds: %.6f\n", last_trapped - start);
    return 0;
}
"""


def removal_rows(runs: int, tmp: Path) -> dict:
    """Hit mode: how long a probe's breakpoint stays after its first hit, with each attach
    method. A program calls one function in a loop and times every call; a trapped call
    takes a microsecond or more, an untrapped one tens of nanoseconds."""
    source, binary = tmp / "removal.c", tmp / "removal"
    source.write_text(REMOVAL_PROGRAM)
    subprocess.run(["gcc", "-O1", "-o", binary, source], check=True)
    samples: dict[str, list[float]] = {"uprobe-multi": [], "perf-event": []}
    for _ in range(runs):
        for method in samples:
            result = subprocess.run(BPFCOV + ["run", "-q", "-o", str(tmp / "removal-out"), "--format", "json",
                                              "--attach-method", method, "--", str(binary), "10"],
                                    capture_output=True, text=True, cwd=ROOT)
            if result.returncode != 0:
                raise SystemExit(f"bench: removal with {method} failed:\n{result.stderr[-2000:]}")
            samples[method].append(float(re.search(r"removal-seconds: ([\d.]+)", result.stderr).group(1)))
    return {method: summarize(values) for method, values in samples.items()}


def _trace_in_background(args: list[str], out: Path) -> subprocess.Popen:
    """Start `bpfcov run ARGS` and return once it traces its command."""
    tracer = subprocess.Popen(BPFCOV + ["run", "-o", str(out), "--format", "json", *args], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    for line in tracer.stderr:
        if "Tracing" in line:
            time.sleep(0.5)  # the command's exec and its links
            return tracer
    raise SystemExit(f"bench: {' '.join(args)} did not start tracing")


def _stop(tracer: subprocess.Popen) -> None:
    tracer.send_signal(2)
    tracer.stderr.read()
    tracer.wait(timeout=120)


def outside_rows(n: int, sort_lines: int, runs: int, tmp: Path) -> dict:
    """A process outside the trace, while a trace is active: does it pay for the probes?

    same binary: the sqlite workload, while `bpfcov run --mode count` traces another run of
    that same binary (stopped by SIGSTOP once its links are in place, so it takes no CPU).
    libc code: `sort` on `sort_lines` lines, while `bpfcov run --libs --mode count` traces a
    `sleep` (libc probed in it). Each against runs with no trace at all, interleaved; each
    sample lasts a second or more, so that the machine's noise stays small beside it."""
    lines = tmp / "lines.txt"
    lines.write_text("".join(f"{(i * 7919) % 1000003:07d} line\n" for i in range(sort_lines)))

    def workload() -> float:
        result = subprocess.run([str(WORKLOAD), str(n)], capture_output=True, text=True, check=True)
        return seconds_of(result.stderr)

    def sort() -> float:
        start = time.perf_counter()
        subprocess.run(["sort", "-o", str(tmp / "sorted.txt"), str(lines)], check=True, env={"LC_ALL": "C.UTF-8"})
        return time.perf_counter() - start

    cases = {"same binary": (workload, ["--mode", "count", "--", str(WORKLOAD), "1000000000"], True),
             "libc code": (sort, ["--mode", "count", "--libs", "--", "sleep", "3600"], False)}
    rows = {}
    for case, (measure, trace_args, stop_target) in cases.items():
        plain, traced = [], []
        for _ in range(runs):
            plain.append(measure())
            tracer = _trace_in_background(trace_args, tmp / "outside-out")
            if stop_target:
                subprocess.run(["pkill", "-STOP", "-P", str(tracer.pid)], check=False)
            try:
                traced.append(measure())
            finally:
                if stop_target:
                    subprocess.run(["pkill", "-CONT", "-P", str(tracer.pid)], check=False)
                _stop(tracer)
        rows[case] = {"untraced": summarize(plain), "traced": summarize(traced),
                      "ratio": statistics.median(traced) / statistics.median(plain)}
    return rows


def pytest_row(runs: int, tmp: Path) -> dict:
    """`bpfcov run --lines --libs -- python -m pytest` on a small suite, against pytest alone."""
    suite = tmp / "suite"
    suite.mkdir(exist_ok=True)
    (suite / "test_small.py").write_text(
        "import json, re\n"
        "def test_json(): assert json.loads(json.dumps({'a': [1, 2]})) == {'a': [1, 2]}\n"
        "def test_re(): assert re.sub(r'\\d+', '#', 'a1b22') == 'a#b#'\n")
    pytest = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_small.py"]
    samples: dict[str, list[float]] = {"pytest": [], "bpfcov": []}
    for _ in range(runs):
        for name, cmd in (("pytest", pytest), ("bpfcov", BPFCOV + ["run", "-q", "--lines", "--libs", "-o",
                                                                      str(tmp / "pytest-out"), "--", *pytest])):
            start = time.perf_counter()
            subprocess.run(cmd, cwd=suite, check=True, capture_output=True)
            samples[name].append(time.perf_counter() - start)
    from bpfcov.data import store
    stats = store.read(str(tmp / "pytest-out" / "bpfcov.db")).stats
    return {"pytest": summarize(samples["pytest"]), "bpfcov": summarize(samples["bpfcov"]), "probes": stats["probes"]}


RUNNER_SCRIPT = """start=$(date +%s.%N)
i=0
while [ $i -lt {count} ]; do ./shapes fact 3 >/dev/null; i=$((i + 1)); done
echo "runner-times: $start $(date +%s.%N)" >&2
"""


def runner_row(count: int, runs: int, tmp: Path) -> dict:
    """A runner (a shell loop) starting `count` short test processes, each probed at its
    exec, against the same loop untraced. The loop times itself, so bpfcov's start and
    reports are left out: what remains is what probing at exec costs each process. The
    first traced run indexes shapes (a cold cache); the others find it cached."""
    folder = ROOT / "sample_targets/build/O0"
    loop = ["sh", "-c", RUNNER_SCRIPT.format(count=count)]
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp / "runner-cache"))
    shutil.rmtree(tmp / "runner-cache", ignore_errors=True)

    def timed(cmd: list[str]) -> float:
        result = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, env=env)
        if result.returncode != 0:
            raise SystemExit(f"bench: runner failed:\n{result.stderr[-2000:]}")
        start, end = re.search(r"runner-times: ([\d.]+) ([\d.]+)", result.stderr).groups()
        return float(end) - float(start)

    traced_cmd = BPFCOV + ["run", "-q", "-o", str(tmp / "runner-out"), "--format", "lcov", "--", *loop]
    cold = timed(traced_cmd)
    samples: dict[str, list[float]] = {"untraced": [], "traced": []}
    for _ in range(runs):
        samples["untraced"].append(timed(loop))
        samples["traced"].append(timed(traced_cmd))
    base, traced = statistics.median(samples["untraced"]), statistics.median(samples["traced"])
    from bpfcov.data import store
    execs = store.read(str(tmp / "runner-out" / "bpfcov.db")).stats.get("execs", {})
    return {"processes": count, "untraced": summarize(samples["untraced"]), "traced": summarize(samples["traced"]),
            "cold_seconds": cold, "ratio": traced / base, "ms_per_process": 1000 * (traced - base) / count,
            "cold_ms_per_process": 1000 * (cold - base) / count, "execs": execs}


def index_rows(tmp: Path) -> list[dict]:
    from bpfcov.probes import cache
    from bpfcov.probes.index import index_object
    os.environ["XDG_CACHE_HOME"] = str(tmp / "cache")
    targets = [("sqlite workload", WORKLOAD)]
    libpython = Path("/usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0")
    if libpython.exists():
        targets.append(("libpython3.11 (this machine's)", libpython))
    rows = []
    for name, path in targets:
        for lines in (False, True):
            shutil.rmtree(cache.cache_dir(), ignore_errors=True)
            start = time.perf_counter()
            index = index_object(str(path), lines=lines, quiet=True)
            cold = time.perf_counter() - start
            start = time.perf_counter()
            index_object(str(path), lines=lines, quiet=True)
            cached = time.perf_counter() - start
            rows.append({"object": name, "lines": lines, "functions": len(index.functions),
                         "line_probes": len(index.lines) if index.lines is not None else 0,
                         "dwarf": index.debug_file or ("yes" if any(f.file for f in index.functions) else "no"),
                         "cold_seconds": cold, "cached_seconds": cached})
    return rows


def block_rows(tmp: Path, quick: bool) -> list[dict]:
    """Probes with one per basic block against one on every line's own address
    (BPFCOV_PROBE_EVERY_LINE), with and without --lines (python3.11 takes a minute: not
    with --quick)."""
    from bpfcov.engine.plan import plan_object
    from bpfcov.probes.index import PROBE_EVERY_LINE, index_object
    os.environ["XDG_CACHE_HOME"] = str(tmp / "cache")
    rows = []
    for name, path in [("sqlite workload", WORKLOAD), ("python3.11", Path("/usr/bin/python3.11"))]:
        if not path.exists() or (quick and name != "sqlite workload"):
            continue
        for lines in (False, True):
            counts = {}
            for every_line in ("1", "0"):
                os.environ[PROBE_EVERY_LINE] = every_line
                counts[every_line] = plan_object(index_object(str(path), lines=lines, quiet=True), 0).probe_count
            del os.environ[PROBE_EVERY_LINE]
            rows.append({"object": name, "lines": lines, "every_line_probes": counts["1"], "block_probes": counts["0"]})
    return rows


def debuginfod_row(runs: int, tmp: Path) -> dict:
    """libpython's debug file served by a local debuginfod: the cold fetch (an empty client
    cache each run), then the index built from it; this machine's own copy of the file, in
    /usr/lib/debug, is left out so that the server is the only source."""
    from bpfcov.probes import debuginfo
    from bpfcov.probes.debuginfod import fetch_debuginfo, servers
    from bpfcov.probes.elf import ElfObject
    from bpfcov.probes.index import index_object
    from tests.debuginfod_server import LocalDebuginfod
    libpython = "/usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0"
    with ElfObject(libpython) as obj:
        build_id, local = obj.build_id(), debuginfo.find_debug_file(obj)
    assert build_id and local, "libpython's debug file comes with python3.11-dbg (scripts/setup-system.sh)"
    served = tmp / "debuginfod-served"
    served.mkdir()
    shutil.copy(local, served / "libpython3.11.debug")
    started = time.perf_counter()
    fetch, index = [], []
    local_roots, client_cache = debuginfo.DEFAULT_ROOTS, os.environ.get("DEBUGINFOD_CACHE_PATH")
    with LocalDebuginfod(served, tmp / "debuginfod-server") as server, servers([server.url]):
        server_index = time.perf_counter() - started
        debuginfo.DEFAULT_ROOTS = ()
        try:
            for run in range(runs):
                os.environ["DEBUGINFOD_CACHE_PATH"] = str(tmp / f"debuginfod-client-{run}")
                start = time.perf_counter()
                fetch_debuginfo(build_id)
                fetch.append(time.perf_counter() - start)
                start = time.perf_counter()
                functions = len(index_object(libpython, lines=True, use_cache=False, quiet=True).functions)
                index.append(time.perf_counter() - start)
        finally:
            debuginfo.DEFAULT_ROOTS = local_roots
            if client_cache is None:
                os.environ.pop("DEBUGINFOD_CACHE_PATH", None)
            else:
                os.environ["DEBUGINFOD_CACHE_PATH"] = client_cache
    return {"debug_file_mb": (served / "libpython3.11.debug").stat().st_size / 1e6, "functions": functions,
            "server_index_seconds": server_index, "fetch": summarize(fetch), "index": summarize(index)}


def report_row(tmp: Path) -> dict:
    """Time to write lcov + HTML + JSON from the largest data file (sqlite with --lines)."""
    data = tmp / "lines-report" / "bpfcov.db"
    shutil.rmtree(data.parent, ignore_errors=True)
    subprocess.run(BPFCOV + ["run", "-q", "--lines", "-o", str(data.parent), "--format", "json", "--",
                             str(WORKLOAD), "1000"], check=True, capture_output=True, cwd=ROOT)
    start = time.perf_counter()
    result = subprocess.run(BPFCOV + ["report", str(data), "-o", str(tmp / "report-out"), "--format",
                                      "lcov,html,json"], capture_output=True, text=True, cwd=ROOT)
    elapsed = time.perf_counter() - start
    assert result.returncode == 0, result.stderr
    return {"seconds": elapsed, "data_file_mib": data.stat().st_size / 2**20}


def callgrind_functions(path: Path) -> set[str]:
    """Names of every function callgrind saw execute, in any object (callgrind_annotate
    does not name the object on every line); the caller keeps those of the workload.
    Recursion levels ('2) are folded."""
    out = subprocess.run(["callgrind_annotate", "--threshold=100", "--inclusive=no", str(path)],
                         capture_output=True, text=True, check=True).stdout
    names = set()
    for line in out.splitlines():
        m = re.match(r"\s*[\d,]+ \([\s\d.]+%\)\s+(?:.*?:)?([^\s:]+?)(?:'\d+)?(?: \[.+\])?$", line)
        if m:
            names.add(m.group(1))
    return names


def accuracy_rows(n: int, tmp: Path) -> dict:
    out = tmp / "accuracy"
    run_workload("callgrind", n, out)
    oracle = callgrind_functions(Path(f"{out}.callgrind"))
    rows = {}
    for mode in ("hit", "count"):
        run_workload(mode, n, out / mode)
        report = json.loads((out / mode / "coverage.json").read_text())
        # Compare function by function: a function executed if callgrind names it by any of
        # its aliases, or by its address (callgrind's name for code it has no symbol for).
        ours, theirs = set(), set()
        for obj in report["objects"]:
            for f in obj["functions"]:
                names = {f["name"], *f["aliases"], f"0x{f['address']:016x}"}
                # callgrind counts code where it lies: inlined code is its caller's, so
                # the comparison is of out-of-line copies that were called.
                if f["count"] > 0:
                    ours.add(f["name"])
                if names & oracle:
                    theirs.add(f["name"])
        rows[mode] = {"callgrind_executed": len(theirs), "bpfcov_executed": len(ours),
                      "missed": sorted(theirs - ours)[:20], "extra": sorted(ours - theirs)[:20]}
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import function_counts, gcov_counts  # the test suite's oracle helpers
    gcov_cases = [("shapes", ["fact", "6"]), ("inventory", ["list"]), ("threads", ["4", "1000"]), ("forker", ["4"])]
    compared = equal = 0
    for name, args in gcov_cases:
        oracle_counts = gcov_counts(str(ROOT / "sample_targets/build/gcov" / name), args, tmp / f"gcov-{name}")
        target_out = tmp / f"gcov-run-{name}"
        subprocess.run(BPFCOV + ["run", "-q", "--mode", "count", "-o", str(target_out), "--format", "json", "--",
                                 str(ROOT / "sample_targets/build/O0" / name), *args], capture_output=True, cwd=ROOT)
        ours = function_counts(json.loads((target_out / "coverage.json").read_text()))
        for fn, count in oracle_counts.items():
            if fn in ours:
                compared += 1
                equal += ours[fn] == count
    rows["gcov"] = {"functions_compared": compared, "counts_equal": equal}
    return rows


def environment() -> dict:
    from bpfcov import __version__
    bcc_version = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "python3-bpfcc"], capture_output=True,
                                 text=True).stdout
    return {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "host": platform.node(), "kernel": platform.release(), "cpus": os.cpu_count(),
            "cpu": next((row.split(":", 1)[1].strip() for row in open("/proc/cpuinfo")
                         if row.startswith("model name")), ""),
            "python": platform.python_version(), "bpfcov": __version__, "bcc": bcc_version,
            "sqlite": "3.53.2 (better-sqlite3 12.11.1), -O2 -g"}


def fmt(x: float, digits: int = 2) -> str:
    return f"{x:.{digits}f}"


def markdown(results: dict) -> str:
    env = results["environment"]
    lines = ["# bpfcov benchmark results", "",
             f"Measured {env['date']} on {env['host']}: {env['cpus']} CPUs ({env['cpu']}), kernel {env['kernel']}, "
             f"Python {env['python']}, bcc {env['bcc']}, bpfcov {env['bpfcov']}. Written by `make bench`; "
             "see bench/README.md for how to read it.", ""]
    lines += ["## sqlite workload: the program's own time, traced vs untraced", "",
              "| N | mode | program s (median, min–max) | ratio to untraced | wall s | bpfcov fixed cost s | relinks | "
              "relink s | probes left / probes | bpfcov peak RSS MiB |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for n, rows in results["workload"].items():
        for mode, r in rows.items():
            p = r["program"]
            extra = (f"{r['relinks']:.0f} | {fmt(r['relink_seconds'])} | {r['probes_left']:.0f} / {r['probes']} | "
                     f"{r['peak_rss_mib']:.0f}") if "relinks" in r else "– | – | – | –"
            lines.append(f"| {int(n):,} | {mode} | {fmt(p['median'])} ({fmt(p['min'])}–{fmt(p['max'])}), "
                         f"{p['runs']} runs | "
                         f"{fmt(r['program_ratio'])}× | {fmt(r['wall']['median'])} | "
                         f"{fmt(r['fixed_cost_seconds']) if mode in TRACED_MODES else '–'} | {extra} |")
    lines += ["", results.get("kcov", "kcov: not measured."), ""]
    lines += ["## Hit mode: how long a probe keeps trapping", "",
              "A probe is taken out of the traced process after its first few hits: the time from its first hit "
              "(and from its report as hot) to the close that removes its breakpoint, over every removal, and the "
              "traps each probe took after its first (medians over the runs above).", "",
              "| N | mode | first hit to removal ms p50 / p99 | hot to removal ms p50 / p99 | traps after the first: "
              "total, p50 / p99 per probe |", "| --- | --- | --- | --- | --- |"]
    for n, rows in results["workload"].items():
        for mode, r in rows.items():
            if "removal_ms_p50" in r:
                lines.append(f"| {int(n):,} | {mode} | {fmt(r['removal_ms_p50'], 1)} / {fmt(r['removal_ms_p99'], 1)} | "
                             f"{fmt(r['hot_removal_ms_p50'], 1)} / {fmt(r['hot_removal_ms_p99'], 1)} | "
                             f"{r['traps_after_first_hit']:,.0f}, {r['traps_after_first_hit_p50']:.0f} / "
                             f"{r['traps_after_first_hit_p99']:.0f} |")
    lines += ["", "## Probes: one per basic block", "",
              "A line in straight-line code after its block's first instruction, and a place inlined code runs "
              "through, share the probe of their block (probes/blocks.py), against a probe at each one's own "
              "address:", "", "| object | with lines | probe at every own address | one per block | fewer |",
              "| --- | --- | --- | --- | --- |"]
    for r in results["blocks"]:
        lines.append(f"| {r['object']} | {'yes' if r['lines'] else 'no'} | {r['every_line_probes']:,} | "
                     f"{r['block_probes']:,} | {100 * (1 - r['block_probes'] / r['every_line_probes']):.0f}% |")
    h = results["per_hit"]
    lines += ["", "## Cost of a counted hit (count mode)", "",
              f"A loop calling one function {h['calls']:,} times, median of {h['runs']} interleaved runs: "
              f"{h['empty_us']:.2f} µs a hit with an empty BPF program (the trap alone), {h['count_us']:.2f} µs "
              f"with bpfcov's counting program: the program adds {h['added_percent']:.1f}%.", ""]
    lines += ["", "## Attach and detach (synthesized binary, one function per probe)", "",
              "| method | probes | links | attach s | detach s | index s (cold) |",
              "| --- | --- | --- | --- | --- | --- |"]
    for r in results["attach"]:
        lines.append(f"| {r['method']} | {r['probes']:,} | {r['links']:,} | {fmt(r['attach_seconds'], 3)} | "
                     f"{fmt(r['detach_seconds'], 3)} | "
                     f"{fmt(r['index_seconds'], 2)} |")
    rm = results["removal"]
    lines += ["", "## Removal of a probe after its first hit (hit mode)", "",
              "A loop calls one function and times each call; the breakpoint has left when calls stop taking a "
              f"trap's microsecond. Median of {rm['perf-event']['runs']} interleaved runs: uprobe-multi (a new "
              f"link without the probe) {fmt(1000 * rm['uprobe-multi']['median'], 1)} ms "
              f"({fmt(1000 * rm['uprobe-multi']['min'], 1)}–{fmt(1000 * rm['uprobe-multi']['max'], 1)}); "
              f"perf-event (the probe's own link closed) {fmt(1000 * rm['perf-event']['median'], 1)} ms "
              f"({fmt(1000 * rm['perf-event']['min'], 1)}–{fmt(1000 * rm['perf-event']['max'], 1)})."]
    lines += ["", "## Processes outside the trace", "",
              "A process that is not traced, run while a trace is active, against runs with no trace (links carry "
              "the traced process's pid, so no other process gets a breakpoint):", "",
              "| case | untraced s (median, min–max) | during a trace s | ratio |", "| --- | --- | --- | --- |"]
    for case, r in results["outside"].items():
        u, t = r["untraced"], r["traced"]
        lines.append(f"| {case} | {fmt(u['median'], 3)} ({fmt(u['min'], 3)}–{fmt(u['max'], 3)}) | "
                     f"{fmt(t['median'], 3)} ({fmt(t['min'], 3)}–{fmt(t['max'], 3)}) | {fmt(r['ratio'])}× |")
    py = results["pytest"]
    lines += ["", "## A test runner with --lines --libs", "",
              f"`python -m pytest` on two tests, alone: {fmt(py['pytest']['median'])} s "
              f"({fmt(py['pytest']['min'])}–{fmt(py['pytest']['max'])}); under `bpfcov run --lines --libs` "
              f"({py['probes']:,} probes in the interpreter and its libraries): {fmt(py['bpfcov']['median'])} s "
              f"({fmt(py['bpfcov']['min'])}–{fmt(py['bpfcov']['max'])}), wall time, reports included."]
    rr = results["runner"]
    u, t = rr["untraced"], rr["traced"]
    lines += ["", "## A runner that starts many test processes", "",
              f"A shell loop running `shapes fact 3` {rr['processes']} times, timed by the loop itself; under "
              "`bpfcov run` each process is stopped at its exec, probed and continued. Untraced "
              f"{fmt(u['median'], 3)} s ({fmt(u['min'], 3)}–{fmt(u['max'], 3)}), traced {fmt(t['median'], 3)} s "
              f"({fmt(t['min'], 3)}–{fmt(t['max'], 3)}), {u['runs']} interleaved runs each: {fmt(rr['ratio'])}×, "
              f"{fmt(rr['ms_per_process'])} ms more per process with the index cached. The first traced run, "
              f"which indexes shapes (cold cache): {fmt(rr['cold_seconds'], 3)} s, "
              f"{fmt(rr['cold_ms_per_process'])} ms more per process."]
    lines += ["", "## Indexing", "", "| object | with lines | functions | line probes | DWARF | cold s | cached s |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in results["index"]:
        lines.append(f"| {r['object']} | {'yes' if r['lines'] else 'no'} | {r['functions']:,} | {r['line_probes']:,} | "
                     f"{r['dwarf']} | {fmt(r['cold_seconds'])} | {fmt(r['cached_seconds'], 3)} |")
    d = results["debuginfod"]
    f, i = d["fetch"], d["index"]
    lines += ["", "## Debug info from debuginfod", "",
              f"libpython3.11's debug file ({d['debug_file_mb']:.1f} MB) on a local debuginfod (Debian's, on "
              f"loopback; it indexed the file in {fmt(d['server_index_seconds'])} s). Cold fetch, into an empty "
              f"client cache: {fmt(f['median'], 3)} s ({fmt(f['min'], 3)}–{fmt(f['max'], 3)}); then the index "
              f"with --lines built from it ({d['functions']:,} functions): {fmt(i['median'])} s "
              f"({fmt(i['min'])}–{fmt(i['max'])}), {f['runs']} runs."]
    rep = results["report"]
    lines += ["", "## Reports", "", f"lcov + HTML + JSON from the sqlite data file with --lines "
              f"({rep['data_file_mib']:.1f} MiB): {fmt(rep['seconds'])} s (including Python start-up)."]
    if "big" in results:
        lines += big_markdown(results["big"])
    if "fleet" in results:
        lines += fleet_markdown(results["fleet"])
    lines += [*layout_markdown(results["layout"]), ""]
    acc = results["accuracy"]
    lines += ["## Accuracy", "", f"Functions of the sqlite workload (N={results['accuracy_n']:,}) that executed, "
              "by callgrind (the oracle) and by bpfcov:", "",
              "| bpfcov mode | callgrind executed | bpfcov executed | missed by bpfcov | extra in bpfcov |",
              "| --- | --- | --- | --- | --- |"]
    for mode in ("hit", "count"):
        a = acc[mode]
        lines.append(f"| {mode} | {a['callgrind_executed']} | {a['bpfcov_executed']} | "
                     f"{', '.join(a['missed']) or 'none'} | "
                     f"{', '.join(a['extra']) or 'none'} |")
    g = acc["gcov"]
    lines += ["", f"Count mode against gcov's call counts on the sample targets: {g['counts_equal']} of "
              f"{g['functions_compared']} functions have exactly gcov's count.", ""]
    return "\n".join(lines)


SECTIONS = ("workload", "per_hit", "attach", "removal", "outside", "pytest", "runner", "index", "blocks",
            "debuginfod", "report", "big", "fleet", "layout", "accuracy")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one run each (for the tests)")
    parser.add_argument("--out", default=str(ROOT / "bench"), help="folder for RESULTS.md and results.json")
    parser.add_argument("--only", help="comma-separated sections to measure again; the others keep their figures "
                        f"from the last results.json ({', '.join(SECTIONS)})")
    args = parser.parse_args()
    out = Path(args.out)
    only = set(args.only.split(",")) if args.only else set(SECTIONS)
    if only - set(SECTIONS):
        raise SystemExit(f"bench: unknown sections: {', '.join(sorted(only - set(SECTIONS)))}")
    results = json.loads((out / "results.json").read_text()) if args.only else {}
    runs = 1 if args.quick else 5
    kcov = kcov_binary()
    with tempfile.TemporaryDirectory(prefix="bpfcov-bench-") as tmp_name:
        tmp = Path(tmp_name)
        results.update({"environment": environment(), "quick": args.quick})
        if "workload" in only:
            with_kcov = ["kcov"] if kcov else []
            results["kcov"] = f"kcov rows: {kcov}." if kcov else \
                "kcov: not measured (not on PATH, and KCOV_SOURCE names no source tree to build it from)."
            results["workload"] = {}
            sizes = [(2000, ["untraced", "hit", "lines", "count"])] if args.quick else [
                (200_000, ["untraced", "hit", "lines", *with_kcov]),
                (2_000_000, ["untraced", "hit", "lines", *with_kcov]),
                # Counting every call costs a trap each (~5 µs): at N=200,000 one run takes minutes,
                # so count mode and callgrind are compared on a smaller workload.
                (20_000, ["untraced", "count", "callgrind"]),
            ]
            for n, modes in sizes:
                print(f"bench: sqlite N={n:,}: {', '.join(modes)} x{runs}", file=sys.stderr)
                results["workload"][str(n)] = workload_rows(n, modes, runs, tmp)
        steps = [
            ("per_hit", "cost per counted hit", lambda: per_hit_rows(20_000 if args.quick else 1_000_000, runs, tmp)),
            ("attach", "attach and detach", lambda: attach_rows([100, 1000] if args.quick else [1_000, 10_000, 100_000],
                                                                tmp)),
            ("removal", "removal of a probe after its first hit", lambda: removal_rows(runs, tmp)),
            ("outside", "processes outside a trace",
             lambda: outside_rows(2000 if args.quick else 1_000_000, 10_000 if args.quick else 2_000_000, runs, tmp)),
            ("pytest", "a test runner with --lines --libs", lambda: pytest_row(1 if args.quick else 3, tmp)),
            ("runner", "a runner starting many test processes",
             lambda: runner_row(20 if args.quick else 200, runs, tmp)),
            ("index", "indexing", lambda: index_rows(tmp)),
            ("blocks", "probes per basic block", lambda: block_rows(tmp, args.quick)),
            ("debuginfod", "debug info from a local debuginfod", lambda: debuginfod_row(runs, tmp)),
            ("report", "reports", lambda: report_row(tmp)),
            ("big", "reports for big programs", lambda: big_rows(args.quick, 1 if args.quick else 3, tmp)),
            ("fleet", "a fleet pushing into PostgreSQL", lambda: fleet_row(args.quick)),
            ("layout", "code layout from an orderfile",
             lambda: layout_rows(2000 if args.quick else 20_000, 1 if args.quick else 11, tmp)),
        ]
        for section, what, measure in steps:
            if section in only:
                print(f"bench: {what}", file=sys.stderr)
                results[section] = measure()
        if "accuracy" in only:
            print("bench: accuracy", file=sys.stderr)
            results["accuracy_n"] = 2000 if args.quick else 20_000
            results["accuracy"] = accuracy_rows(results["accuracy_n"], tmp)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "RESULTS.md").write_text(markdown(results))
    print(f"bench: wrote {out / 'RESULTS.md'} and {out / 'results.json'}", file=sys.stderr)


if __name__ == "__main__":
    main()
