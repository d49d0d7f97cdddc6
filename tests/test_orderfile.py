"""--format orderfile: the executed functions in the order they first ran, against gdb's
view of the same run, and as lld takes it: no warning, and the code laid out in its order.

The program is the sqlite workload linked by lld from objects with a section per function
(sample_targets/build/sections/), without PIE, so that gdb's breakpoint addresses are the
symbols' own."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from conftest import BUILD, bpfcov, coverage_json

SECTIONS = BUILD / "sections"
GDB_FIRST_CALLS = Path(__file__).parent / "gdb_first_calls.py"
ROWS = "2000"


def link(output: Path, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(["gcc", "-fuse-ld=lld", "-no-pie", "-o", str(output), *flags, str(SECTIONS / "workload.o"),
                           str(SECTIONS / "sqlite3.o"), "-lm"], capture_output=True, text=True)


@pytest.fixture
def workload(tmp_path) -> Path:
    binary = tmp_path / "workload"
    linked = link(binary)
    assert linked.returncode == 0, linked.stderr
    return binary


def function_addresses(binary: Path) -> dict[str, int]:
    """name -> address of each defined function symbol with code (the symbol table's)."""
    out = subprocess.run(["readelf", "-sW", str(binary)], capture_output=True, text=True, check=True).stdout
    found: dict[str, int] = {}
    for f in (line.split() for line in out.splitlines()):
        if len(f) >= 8 and f[3] == "FUNC" and f[6] != "UND" and f[2] != "0":
            found.setdefault(f[7].split("@")[0], int(f[1], 16))
    return found


def orderfile(out: Path, name: str = "workload.txt") -> list[str]:
    return [line.strip() for line in (out / "orderfiles" / name).read_text().splitlines()
            if not line.startswith("#")]


def first_calls_by_gdb(binary: Path, tmp_path: Path) -> list[int]:
    addresses, order = tmp_path / "gdb-addresses", tmp_path / "gdb-first-calls"
    addresses.write_text("".join(f"{a:#x}\n" for a in sorted(set(function_addresses(binary).values()))))
    env = {**os.environ, "FIRST_CALLS_ADDRESSES": str(addresses), "FIRST_CALLS_OUT": str(order)}
    ran = subprocess.run(["gdb", "-batch", "-nx", "-x", str(GDB_FIRST_CALLS), "--args", str(binary), ROWS],
                         capture_output=True, text=True, env=env, timeout=300)
    assert ran.returncode == 0 and order.exists(), ran.stdout[-2000:] + ran.stderr[-2000:]
    return [int(line, 16) for line in order.read_text().split()]


def test_orderfile_is_the_order_gdb_sees_functions_first_called(bpf, workload, tmp_path):
    out = tmp_path / "out"
    bpfcov("run", "-q", "-o", out, "--format", "orderfile,json", "--", workload, ROWS)
    ours = orderfile(out)
    address = function_addresses(workload)
    name_at = {a: n for n, a in sorted(address.items(), reverse=True)}
    theirs = [name_at[a] for a in first_calls_by_gdb(workload, tmp_path)]
    assert len(ours) > 400 and ours[:2] == ["_start", "main"]
    assert not set(ours) - set(theirs), "listed as run, but gdb never saw it called"
    assert ours == [n for n in theirs if n in set(ours)], "not the order of first calls"
    # The one difference allowed: in hit mode without --lines, a function whose inlined
    # copy ran first is answered, and its entry probe goes (engine/answered.py); a later
    # call of its out-of-line copy is unseen, so it is missing from the order. coverage.json
    # shows exactly that: executed, through inlined copies, with no call seen.
    functions = {f["name"]: f for f in coverage_json(out)["objects"][0]["functions"]}
    missing = [n for n in theirs if n not in set(ours)]
    for name in missing:
        f = functions[name]
        assert f["status"] == "hit" and f["count"] == 0 and f["inlined_count"] > 0, f
    assert len(missing) <= len(theirs) // 50, missing


def test_lld_takes_the_orderfile_and_lays_code_out_in_its_order(bpf, workload, tmp_path):
    out = tmp_path / "out"
    bpfcov("run", "-q", "-o", out, "--format", "orderfile", "--", workload, ROWS)
    relinked = tmp_path / "workload-ordered"
    linked = link(relinked, f"-Wl,--symbol-ordering-file={out / 'orderfiles' / 'workload.txt'}",
                  "-Wl,--warn-symbol-ordering", "-Wl,--fatal-warnings")
    assert linked.returncode == 0 and not linked.stderr, linked.stderr  # the comments too are lld's
    address = function_addresses(relinked)
    placed = [address[name] for name in orderfile(out)]
    assert placed == sorted(placed) and len(set(placed)) == len(placed)
    same = [subprocess.run([b, ROWS], capture_output=True, text=True, check=True).stdout for b in (workload, relinked)]
    assert same[0] == same[1]


def test_count_mode_orders_busiest_first_and_reports_keep_the_order(bpf, workload, tmp_path):
    counted, hit = tmp_path / "counted", tmp_path / "hit"
    bpfcov("run", "-q", "-o", counted, "--mode", "count", "--libs", "--format", "orderfile,json", "--",
           workload, ROWS)
    objects = {os.path.basename(o["path"]): o for o in coverage_json(counted)["objects"]}
    functions = {f["name"]: f for f in objects["workload"]["functions"]}
    ours = orderfile(counted)
    calls = [functions[name]["count"] for name in ours]
    assert calls == sorted(calls, reverse=True) and calls[-1] > 0
    assert {n for n, f in functions.items() if f["count"] > 0 and f["size"] > 0} == set(ours)
    # One file per object: a link makes one, and lld warns of symbols it lacks.
    assert sorted(os.listdir(counted / "orderfiles")) == sorted(f"{name}.txt" for name in objects)
    assert "__libc_start_main" in orderfile(counted, "libc.so.6.txt")
    # The data file keeps first hits: a report written again from it gives the same order.
    bpfcov("run", "-q", "-o", hit, "--format", "orderfile", "--", workload, ROWS)
    bpfcov("report", hit / "bpfcov.db", "-o", tmp_path / "again", "--format", "orderfile")
    assert orderfile(tmp_path / "again") == orderfile(hit)


def test_merged_runs_order_by_the_earliest_first_hit_in_any(bpf, workload, tmp_path):
    """A run of no rows (no inserts) and a full run, merged: each function takes its
    earliest first hit in either, and the orderfile of the merge follows those."""
    from bpfcov.data import store
    from bpfcov.data.merge import merge

    full, empty = tmp_path / "full", tmp_path / "empty"
    bpfcov("run", "-q", "-o", full, "--format", "orderfile", "--", workload, ROWS)
    bpfcov("run", "-q", "-o", empty, "--format", "orderfile", "--", workload, "0")
    assert len(set(orderfile(full)) - set(orderfile(empty))) > 20  # binding, inserting, querying

    def first_hits(run) -> dict[str, int]:
        obj = run.objects[0]
        return {f.name: int(ns) for f, ns in zip(obj.index.functions, obj.first_hit_ns())}

    runs = [store.read(str(d / "bpfcov.db")) for d in (full, empty)]
    each = [first_hits(r) for r in runs]
    merged = first_hits(merge(runs))
    assert merged == {name: min((h[name] for h in each if h[name]), default=0) for name in merged}
    bpfcov("report", full / "bpfcov.db", empty / "bpfcov.db", "-o", tmp_path / "merged", "--format", "orderfile")
    order = orderfile(tmp_path / "merged")
    assert set(order) == set(orderfile(full)) | set(orderfile(empty))
    assert [merged[n] for n in order] == sorted(merged[n] for n in order)
