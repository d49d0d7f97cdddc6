"""The fleet store against a real PostgreSQL server (tests/postgres_server.py).

The oracle for counts is twofold: gcov, for two traced runs of the sqlite workload
pushed under two host labels; and the hosts' own data files, which a store must add up
to exactly (nothing lost, nothing doubled) while hosts push at once, a push is SIGKILLed
halfway, and the server restarts under them.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import (
    ROOT,
    assert_counts_equal_gcov,
    bpfcov,
    coverage_json,
    function_counts,
    gcov_counts,
    read_until_tracing,
    target,
)
from postgres_server import DATABASE, LocalPostgres

WORKLOAD_GCOV = ROOT / "sample_targets/build/sqlite/workload-gcov"
WORKLOAD_N = "200"
_databases = itertools.count(1)


@pytest.fixture(scope="module")
def server():
    with LocalPostgres() as pg:
        yield pg


@pytest.fixture
def store(server, monkeypatch):
    """A database of its own for each test, and libpq's password file in the environment."""
    name = f"{DATABASE}_{next(_databases)}"
    server.sql(f"CREATE DATABASE {name} OWNER fleet")
    server.write_pgpass("fleet-secret")
    monkeypatch.setenv("PGPASSFILE", str(server.pgpass))
    return server.url.replace(f"/{DATABASE}?", f"/{name}?")


def error_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bpfcov: error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_store_init_migrates_once_and_versions_are_checked(store, server, tmp_path):
    data = tmp_path / "nothing.db"
    assert "store init" in error_line(bpfcov("report", store, "-o", tmp_path / "r", check=False))
    first = bpfcov("store", "init", store)
    assert "schema 0 -> 1" in first.stderr
    again = bpfcov("store", "init", store)
    assert "nothing to do" in again.stderr
    database = store.split("/")[3].split("?")[0]
    server.sql("UPDATE bpfcov_schema SET version = 99", database=database)
    newer = bpfcov("report", store, "-o", tmp_path / "r", check=False)
    assert newer.returncode == 1 and "newer than this bpfcov" in error_line(newer)
    assert "newer than this bpfcov" in error_line(bpfcov("store", "init", store, check=False))
    assert not data.exists()


def test_bad_store_fails_in_one_line_before_anything_is_attached(bpf, store, server, tmp_path):
    bpfcov("store", "init", store)
    out = tmp_path / "out"
    command = ["run", "-o", out, "--store"]
    server.write_pgpass("not-the-password")
    wrong = bpfcov(*command, store, "--", "true", check=False)
    assert wrong.returncode == 1 and "password authentication failed" in error_line(wrong)
    server.write_pgpass("fleet-secret")
    missing = bpfcov(*command, store.replace("/coverage_", "/nosuch_"), "--", "true", check=False)
    assert missing.returncode == 1 and "does not exist" in error_line(missing)
    with_password = store.replace("fleet@", "fleet:fleet-secret@")
    shown = bpfcov(*command, with_password, "--", "true", check=False)
    assert shown.returncode == 2 and ".pgpass" in error_line(shown) and "fleet-secret" not in shown.stderr
    # Nothing was traced: no data file, no reports.
    assert not (out / "bpfcov.db").exists()
    # A sqlite:/// store is a data file where the URL says, instead of OUT/bpfcov.db.
    elsewhere = tmp_path / "kept" / "shapes.db"
    bpfcov(*command, f"sqlite://{elsewhere}", "--format", "json", "--", target("O0", "shapes"), "fact", "3")
    assert elsewhere.exists() and not (out / "bpfcov.db").exists()
    assert function_counts(bpfcov_load_json(elsewhere, tmp_path))["factorial"] >= 1
    # Without the driver, the error names the extra to install.
    no_driver = subprocess.run(
        [sys.executable, "-c", "import sys; sys.modules['psycopg'] = None; from bpfcov.cli import main; "
                               f"sys.exit(main(['store', 'init', {store!r}]))"],
        capture_output=True, text=True, timeout=60)
    assert no_driver.returncode == 1 and "bpfcov[postgresql]" in error_line(no_driver)


def test_two_hosts_add_up_to_twice_gcov(bpf, store, server, tmp_path):
    """Two count-mode runs of the sqlite workload, pushed as two hosts: the store reports
    the sum, which is gcov's counts doubled; each host alone is gcov's."""
    bpfcov("store", "init", store)
    oracle = gcov_counts(str(WORKLOAD_GCOV), [WORKLOAD_N], tmp_path)
    assert oracle, "gcov produced no counts"
    for host in ("web-1", "web-2"):
        # Each host's .gcda files of its own, as on two machines: a second run into the same
        # ones would also run gcov's merging code.
        env = dict(os.environ, GCOV_PREFIX=str(tmp_path / f"{host}-gcda"))
        bpfcov("run", "-q", "-o", tmp_path / host, "--mode", "count", "--store", store, "--host-label", host,
               "--", WORKLOAD_GCOV, WORKLOAD_N, env=env)
    out = tmp_path / "fleet"
    bpfcov("report", store, "-o", out, "--format", "json,lcov,html")
    report = coverage_json(out)
    twice = {name: 2 * count for name, count in oracle.items()}
    assert assert_counts_equal_gcov(function_counts(report), twice) > 500
    alone = tmp_path / "alone"
    bpfcov("report", store, "--host-label", "web-2", "-o", alone, "--format", "json")
    assert assert_counts_equal_gcov(function_counts(coverage_json(alone)), oracle) > 500
    # The fleet's facts: hosts per function, first and last executed.
    functions = {f["name"]: f for o in report["objects"] for f in o["functions"]}
    ran = [f for f in functions.values() if f["status"] == "hit"]
    wrong = [(f["name"], f["hosts"], f["first_executed"], f["last_executed"]) for f in ran
             if not (f["hosts"] == 2 and f["first_executed"] <= f["last_executed"])]
    assert ran and not wrong, wrong[:10]
    dead = [f for f in functions.values() if f["status"] == "unhit"]
    assert dead and all(f["hosts"] == 0 and f["last_executed"] is None for f in dead)
    assert report["objects"][0]["watched"]["hosts"] == 2
    page = (out / "html/index.html").read_text()
    assert ">Watched</th>" in page and "<td>2 hosts, " in page
    # --since selects days: every count is from today.
    assert function_counts(coverage_json(_report(store, tmp_path / "since", "--since", "1d"))) == \
        function_counts(report)
    # A push into a store a newer bpfcov has migrated meanwhile is refused, in one line.
    server.sql("UPDATE bpfcov_schema SET version = 2", database=store.split("/")[3].split("?")[0])
    refused = bpfcov("store", "push", tmp_path / "web-1/bpfcov.db", store, check=False)
    assert refused.returncode == 1 and "newer than this bpfcov" in error_line(refused)


def bpfcov_load_json(data: Path, tmp_path: Path) -> dict:
    return coverage_json(_report(str(data), tmp_path / f"from-{data.stem}"))


def _report(store: str, out: Path, *options) -> Path:
    bpfcov("report", store, "-o", out, "--format", "json", *options)
    return out


def _simulated_host(store: str, label: str, data: Path, out: Path, steps: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "tests/fleet_host.py"), store, label, str(data), str(out),
                             str(steps)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _superuser(server, database: str):
    import psycopg
    return psycopg.connect(host=str(server.folder), port=server.port, user="postgres", dbname=database,
                           autocommit=True)


def _wait_for(what, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, f"timed out waiting for {what.__doc__}"
        time.sleep(0.02)


def test_concurrent_hosts_a_killed_push_and_a_restart_lose_and_double_nothing(bpf, store, server, tmp_path):
    bpfcov("store", "init", store)
    # One real run, with lines, that every simulated host replays growing.
    seed = tmp_path / "seed"
    bpfcov("run", "-q", "-o", seed, "--lines", "--mode", "count", "--format", "json", "--",
           ROOT / "sample_targets/build/sqlite/workload", "100")
    data = seed / "bpfcov.db"
    database = store.split("/")[3].split("?")[0]
    admin = _superuser(server, database)

    # The victim is SIGKILLed halfway through a push: a lock the test holds stops the push
    # inside its transaction, after it has inserted its key and before its counts.
    victim = _simulated_host(store, "victim", data, tmp_path / "victim", 400)
    for _ in range(3):
        assert victim.stdout.readline().startswith("step"), victim.stderr.read()
    locker = _superuser(server, database)
    locker.execute("BEGIN")
    locker.execute("LOCK TABLE function_counts IN EXCLUSIVE MODE")

    def victim_waits_on_the_lock():
        """the victim's push to wait on the test's lock"""
        return admin.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                             "'bpfcov push victim' AND wait_event_type = 'Lock'").fetchone()[0] == 1
    _wait_for(victim_waits_on_the_lock)
    committed = admin.execute("SELECT max(seq) FROM pushes WHERE host = 'victim'").fetchone()[0]
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    locker.execute("ROLLBACK")

    def victim_gone():
        """the killed push's server process to end"""
        return admin.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                             "'bpfcov push victim'").fetchone()[0] == 0
    _wait_for(victim_gone)
    # The half-done push left nothing, not even its key.
    assert admin.execute("SELECT max(seq) FROM pushes WHERE host = 'victim'").fetchone()[0] == committed

    hosts = {label: _simulated_host(store, label, data, tmp_path / label, 40) for label in ("a", "b", "c")}
    for proc in hosts.values():  # let each push a few times, then take the server away under them
        for _ in range(5):
            assert proc.stdout.readline().startswith("step"), proc.stderr.read()
    server.restart()
    retried = []
    for label, proc in hosts.items():
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0 and stdout.rstrip().endswith("done"), f"{label}: {stderr}"
        retried.append("retrying" in stderr)
    assert any(retried), "no host noticed the restart"

    # What the killed bpfcov's data file holds, sent afterwards; a second send adds nothing.
    first = bpfcov("store", "push", tmp_path / "victim/bpfcov.db", store)
    again = bpfcov("store", "push", tmp_path / "victim/bpfcov.db", store)
    assert "pushed" in first.stderr and "already held" in again.stderr

    # The store holds the sum of the hosts' own files: nothing lost, nothing doubled.
    files = [tmp_path / label / "bpfcov.db" for label in ("victim", "a", "b", "c")]
    bpfcov("merge", *files, "-o", tmp_path / "sum.db")
    expected = _counts(_report(str(tmp_path / "sum.db"), tmp_path / "sum"))
    assert _counts(_report(store, tmp_path / "fleet")) == expected
    for label in ("victim", "a"):
        alone = _counts(_report(store, tmp_path / f"only-{label}", "--host-label", label))
        assert alone == _counts(_report(str(tmp_path / label / "bpfcov.db"), tmp_path / f"file-{label}"))
    admin.close()
    locker.close()


def _counts(out: Path, lines: bool = True) -> tuple[dict, dict]:
    """(function counts, line counts) of a coverage.json, the executed ones only."""
    report = json.loads((out / "coverage.json").read_text())
    functions = {(o["build_id"], f["name"]): (f["count"], f["inlined_count"])
                 for o in report["objects"] for f in o["functions"] if f["count"] or f["inlined_count"]}
    line_counts = {(o["build_id"], r["file"], r["line"]): r["count"] for o in report["objects"] for r in o["lines"]
                   if r["count"]}
    assert functions and (line_counts or not lines)
    return functions, line_counts


def test_watch_service_pushes_as_it_goes_and_reopens_the_store_on_sighup(bpf, store, server, tmp_path):
    bpfcov("store", "init", store)
    binary = tmp_path / "workload"
    shutil.copy(ROOT / "sample_targets/build/sqlite/workload", binary)  # a private copy: no other test maps it
    out = tmp_path / "out"
    admin = _superuser(server, store.split("/")[3].split("?")[0])

    def pusher_pid():
        row = admin.execute("SELECT pid FROM pg_stat_activity WHERE application_name = 'bpfcov push svc'").fetchone()
        return row[0] if row else None

    def pushed_main(times: int):
        def done():
            row = admin.execute("SELECT sum(count) FROM function_counts WHERE host = 'svc' AND name = 'main'"
                                ).fetchone()
            return row[0] == times
        done.__doc__ = f"main to be pushed as run {times}x"
        return done

    watcher = subprocess.Popen([sys.executable, "-m", "bpfcov", "watch", "--service", "--interval", "0.5", "--mode",
                                "count", "--store", store, "--host-label", "svc", "-o", out, str(binary)],
                               stderr=subprocess.PIPE, text=True)
    try:
        read_until_tracing(watcher)
        subprocess.run([binary, "50"], check=True, capture_output=True)
        _wait_for(pushed_main(1))
        before = pusher_pid()
        watcher.send_signal(signal.SIGHUP)
        subprocess.run([binary, "50"], check=True, capture_output=True)
        _wait_for(pushed_main(2))
        assert watcher.poll() is None, "SIGHUP stopped the service"
        assert pusher_pid() not in (None, before), "the store was not reopened"
        watcher.send_signal(signal.SIGTERM)
        assert watcher.wait(timeout=120) == 0, watcher.stderr.read()
    finally:
        watcher.kill()
        admin.close()
    # What the service pushed is what its own data file holds.
    pushed = _counts(_report(store, tmp_path / "fleet"), lines=False)
    assert pushed == _counts(_report(str(out / "bpfcov.db"), tmp_path / "file"), lines=False)
