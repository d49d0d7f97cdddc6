"""The fleet store bench: many hosts pushing into one PostgreSQL server.

100 simulated hosts run the same build of 10,000 functions in count mode and push every
10 s, each over its own connection, staggered across the period as independent hosts
would be. 2,000 of the functions run, and every one of them counts up between two pushes
(the worst case for a push: hit mode sends almost nothing after its first minutes).
The server is Debian's PostgreSQL in a scratch folder (tests/postgres_server.py), on a
Unix socket, on this same 2-core machine.

Figures: a push's latency as the host sees it (one transaction: key, run totals, gains),
median, p99 and max; and the server's CPU time per push, from the CPU time of all its
processes over the run (/proc), divided by the pushes applied.
"""

from __future__ import annotations

import os
import pwd
import statistics
import threading
import time
import uuid

import numpy as np

from bench.figures import summarize
from bpfcov.data.merge import object_key
from bpfcov.data.model import ObjectCoverage, RunCoverage
from bpfcov.fleet.connection import connect, parse_store_url
from bpfcov.fleet.push import Push, PushKey, apply
from bpfcov.probes.model import Function, ObjectIndex
from tests.postgres_server import LocalPostgres

HOSTS, FUNCTIONS, RUNNING, PERIOD = 100, 10_000, 2_000, 10.0


def _build(functions: int) -> ObjectIndex:
    rng = np.random.default_rng(7)
    sizes = rng.integers(16, 2_000, functions).tolist()
    address, rows = 0x10000, []
    for i, size in enumerate(sizes):
        name = f"_ZN6server{len(str(i)) + 7}handler{i}Ev"
        rows.append(Function(name, f"server::handler{i}()", address, address - 0x1000, size, f"src/part{i % 97}.cc",
                             10 + i % 500, 20 + i % 500))
        address += size
    return ObjectIndex("/usr/local/bin/server", "5eed" * 10, rows)


def _server_cpu_seconds() -> float:
    """CPU time, so far, of every process the postgres user runs (the server's, here),
    with that of its ended children: a host's backend ends when it disconnects."""
    uid, ticks = pwd.getpwnam("postgres").pw_uid, os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.stat(f"/proc/{pid}").st_uid != uid:
                continue
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += sum(int(n) for n in fields[11:15])  # utime, stime, cutime, cstime
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total / ticks


def _host(url, index: ObjectIndex, label: str, pushes: int, offset: float, latencies: list[tuple[int, float]],
          failures: list[str]) -> None:
    try:
        _pushes(url, index, label, pushes, offset, latencies)
    except Exception as e:  # noqa: BLE001 - the bench reports every host that failed, then stops
        failures.append(f"{label}: {e}")


def _pushes(url, index: ObjectIndex, label: str, pushes: int, offset: float,
            latencies: list[tuple[int, float]]) -> None:
    rng = np.random.default_rng(abs(hash(label)) % 2**32)
    running = rng.choice(len(index.functions), RUNNING, replace=False)
    counts = np.zeros(len(index.functions), dtype=np.int64)
    zeros = np.zeros(len(index.functions), dtype=np.int64)
    run = RunCoverage(mode="count", command=["server"], started=time.time(), ended=None, host=label,
                      kernel="bench", lines=False)
    conn = connect(url, name=f"bpfcov bench {label}")
    known: dict[str, ObjectCoverage] = {}
    stored: set[tuple[str, bool]] = set()
    run_id = str(uuid.uuid4())
    time.sleep(offset)
    start = time.monotonic()
    try:
        for seq in range(1, pushes + 1):
            counts[running] += rng.integers(1, 1_000, RUNNING)
            obj = ObjectCoverage(index, counts.copy(), None, zeros, zeros)
            push = Push(PushKey(label, run_id, seq), time.time(), [obj], run)
            began = time.perf_counter()
            apply(conn, push, known, stored)
            latencies.append((seq, time.perf_counter() - began))
            known = {object_key(obj): obj}  # what the store now holds, so the next push sends what changed
            time.sleep(max(0.0, start + seq * PERIOD - time.monotonic()))
    finally:
        conn.close()


def fleet_row(quick: bool) -> dict:
    hosts, pushes = (5, 2) if quick else (HOSTS, 6)
    period = 1.0 if quick else PERIOD
    index = _build(FUNCTIONS)
    with LocalPostgres(max_connections=hosts + 10) as pg:
        os.environ["PGPASSFILE"] = str(pg.pgpass)
        url = parse_store_url(pg.url)
        from bpfcov.fleet import schema
        conn = connect(url)
        schema.init(conn)
        conn.close()
        latencies: list[tuple[int, float]] = []
        failures: list[str] = []
        cpu_before, wall_before = _server_cpu_seconds(), time.monotonic()
        threads = [threading.Thread(target=_host, args=(url, index, f"host-{i:03d}", pushes, period * i / hosts,
                                                        latencies, failures)) for i in range(hosts)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        cpu, wall = _server_cpu_seconds() - cpu_before, time.monotonic() - wall_before
        if failures:
            raise RuntimeError(f"bench: {len(failures)} hosts failed, first {failures[0]}")
        rows = int(pg.sql("SELECT count(*) FROM function_counts", database="coverage"))
    # A host's first push also stores the build's index, or waits for the host that does;
    # the later ones are the steady state.
    first = [seconds for seq, seconds in latencies if seq == 1]
    later = sorted(seconds for seq, seconds in latencies if seq > 1)
    return {"hosts": hosts, "functions": FUNCTIONS, "running": RUNNING, "period_s": period, "pushes": len(latencies),
            "first_latency_s": summarize(first), "latency_s": summarize(later),
            "latency_p99_s": later[int(0.99 * (len(later) - 1))],
            "server_cpu_ms_per_push": 1000 * cpu / max(1, len(latencies)), "server_cores": cpu / wall,
            "wall_s": wall, "function_count_rows": rows, "mean_latency_s": statistics.fmean(later)}


def markdown(r: dict) -> list[str]:
    lat, first = r["latency_s"], r["first_latency_s"]
    return ["", "## A fleet pushing into PostgreSQL", "",
            f"{r['hosts']} simulated hosts, one build of {r['functions']:,} functions, count mode, each pushing every "
            f"{r['period_s']:g} s over its own connection ({r['running']:,} functions running, all counting up "
            "between pushes: the worst case), into Debian's PostgreSQL 15 on this 2-core machine, Unix socket. "
            f"{r['pushes']:,} pushes in {r['wall_s']:.0f} s (bench/fleet.py).", "",
            "| first push (stores the index once) | later pushes, median (min–max) | p99 | server CPU per push | "
            "server cores busy |",
            "| --- | --- | --- | --- | --- |",
            f"| {first['median'] * 1000:.0f} ms ({first['min'] * 1000:.0f}–{first['max'] * 1000:.0f}) "
            f"| {lat['median'] * 1000:.0f} ms ({lat['min'] * 1000:.0f}–{lat['max'] * 1000:.0f}) | "
            f"{r['latency_p99_s'] * 1000:.0f} ms | {r['server_cpu_ms_per_push']:.1f} ms | {r['server_cores']:.2f} |"]
