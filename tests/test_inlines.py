"""Inlined functions at -O2: a function ran when its out-of-line copy or any place the
compiler inlined it ran. The oracle is gcov at -O0 on the same source, where nothing is
inlined: its call counts are what the -O2 build must report as calls plus inlined runs.
"""

from __future__ import annotations

import json
import re
import subprocess

import pytest
from conftest import ROOT, bpfcov, coverage_json, gcov_counts, target
from test_lines import gcov_lines

from bpfcov.probes.inlines import read_inlined


def _functions(report: dict, object_name: str) -> dict[str, dict]:
    """display name -> coverage.json record, for one object."""
    obj = next(o for o in report["objects"] if o["path"].endswith("/" + object_name))
    return {f["display_name"]: f for f in obj["functions"]}


def _total(f: dict) -> int:
    return f["count"] + f["inlined_count"]


def _traced(tmp_path, name, args, *options):
    out = tmp_path / "out"
    bpfcov("run", "-q", "-o", out, *options, "--", target("O2", name), *args)
    return coverage_json(out), out


@pytest.mark.parametrize("mode", ["count", "hit"])
def test_c_functions_inlined_at_o2_have_gcov_s_o0_counts(bpf, tmp_path, mode, attach_method):
    report, out = _traced(tmp_path, "inlines", ["10"], "--mode", mode, "--attach-method", attach_method)
    fs = _functions(report, "inlines")
    oracle = gcov_counts(target("gcov", "inlines"), ["10"], tmp_path)
    assert (fs["helper"]["status"], fs["helper"]["count"], fs["helper"]["inlined_instances"]) == ("hit", 0, 1)
    assert fs["rare_path"]["status"] == "unhit" and fs["rare_path"]["inlined_instances"] == 1
    assert fs["folded"]["status"] == "no-code" and fs["folded"]["inlined_instances"] == 0
    assert fs["both"]["status"] == "hit" and fs["atoi"]["status"] == "hit"
    if mode == "count":
        for name in ("helper", "rare_path", "both", "main"):
            assert _total(fs[name]) == oracle[name], name
        assert (fs["both"]["count"], fs["both"]["inlined_count"]) == (2, 1)
        # lcov's FNDA is calls plus inlined runs; a no-code function is not in it at all.
        info = (out / "coverage.info").read_text()
        assert "FNDA:10,helper\n" in info and "FNDA:3,both\n" in info and ",folded\n" not in info


@pytest.mark.parametrize("mode", ["count", "hit"])
def test_cpp_templates_and_header_members_inlined_at_o2(bpf, tmp_path, mode, attach_method):
    report, _ = _traced(tmp_path, "inlines-cpp", ["10"], "--mode", mode, "--attach-method", attach_method)
    fs = _functions(report, "inlines-cpp")
    square_long, square_double = fs["long square<long>(long)"], fs["double square<double>(double)"]
    add, get = fs["Counter::add(long)"], fs["Counter::get() const"]
    assert square_long["status"] == square_double["status"] == add["status"] == "hit"
    assert get["status"] == "no-code"
    assert fs["report_overflow"]["status"] == "unhit"  # static: DWARF gives it no linkage name
    # libstdc++'s inline code: the vector is built, filled and destroyed, wherever gcc put that.
    for name in ("std::vector<long, std::allocator<long> >::vector()",
                 "std::vector<long, std::allocator<long> >::push_back(long&&)",
                 "std::vector<long, std::allocator<long> >::~vector()"):
        assert fs[name]["status"] == "hit", name
    if mode == "count":
        oracle = gcov_counts(target("gcov", "inlines-cpp"), ["10"], tmp_path)
        assert _total(square_long) == oracle["_Z6squareIlET_S0_"] == 10
        assert _total(square_double) == oracle["_Z6squareIdET_S0_"] == 1
        assert _total(add) == oracle["_ZN7Counter3addEl"] == 10


def test_symbols_json_lists_inlined_instances(tmp_path):
    records = {f["name"]: f for f in json.loads(bpfcov("symbols", target("O2", "inlines"), "--json").stdout)
               ["functions"]}
    assert records["helper"]["probe"] == "inlined" and records["helper"]["inlined_instances"] == 1
    assert records["folded"]["probe"] == "no-code"
    assert records["both"]["probe"] == "entry" and records["both"]["inlined_instances"] == 1


def test_the_reader_finds_every_inlined_instance_readelf_lists():
    """sqlite's -O2 build: one instance (with code, or folded) per DW_TAG_inlined_subroutine
    that binutils' readelf lists, and entries where their code is."""
    workload = str(ROOT / "sample_targets/build/sqlite/workload")
    dump = subprocess.run(["readelf", "--wide", "--debug-dump=info", workload], capture_output=True, text=True,
                          check=True).stdout
    oracle = dump.count("(DW_TAG_inlined_subroutine)")
    sources = read_inlined(workload)
    assert sum(len(s.instances) + s.folded for s in sources) == oracle > 5000
    assert len([s for s in sources if s.instances]) > 1000
    for s in sources:
        for i in s.instances:
            assert i.ranges and all(low < high for low, high in i.ranges)


# gcc's names for the pieces it cuts a function into at -O2 (clones, split-off cold or
# partial parts): each is still that function's code.
CLONE_SUFFIX = re.compile(r"\.(?:part|constprop|isra|cold|lto_priv|localalias)(?:\.\d+)?")


def test_no_function_gcov_saw_run_at_o0_is_reported_never_executed_at_o2(bpf, tmp_path):
    """The sqlite workload at -O0 under gcov, and at -O2 under bpfcov (hit mode): every
    function gcov counted is executed, unmeasured or no-code at -O2, never dead. Those
    -O2 has no trace of at all (neither a symbol nor DWARF) are listed, and must be few."""
    oracle = gcov_counts(str(ROOT / "sample_targets/build/sqlite/workload-gcov"), ["2000"], tmp_path)
    ran = {name for name, count in oracle.items() if count > 0}
    out = tmp_path / "out"
    bpfcov("run", "-q", "-o", out, "--", str(ROOT / "sample_targets/build/sqlite/workload"), "2000")
    statuses: dict[str, set[str]] = {}
    for f in coverage_json(out)["objects"][0]["functions"]:
        for name in (f["name"], *f["aliases"]):
            base = CLONE_SUFFIX.sub("", name).split("@")[0]
            statuses.setdefault(base, set()).add(f["status"])
    dead = sorted(name for name in ran if statuses.get(name) == {"unhit"})
    assert not dead, f"live at -O0 but never executed at -O2: {dead}"
    missing = sorted(name for name in ran if name not in statuses)
    assert len(missing) <= 0.01 * len(ran), missing


def test_lines_of_inlined_bodies_have_gcov_s_o0_line_counts(bpf, tmp_path):
    """With --lines, an inlined body's lines are measured where it was inlined, even where
    gcc marks them as statements at an address another line begins at (helper's body at
    main's loop head) or not at all. gcov at -O0 counts the same lines."""
    out = tmp_path / "out"
    bpfcov("run", "-q", "-o", out, "--lines", "--mode", "count", "--", target("O2", "inlines"), "10")
    ours = {row["line"]: row["count"] for o in coverage_json(out)["objects"] for row in o["lines"]
            if row["file"].endswith("/inlines/inlines.c")}
    expected, _ = gcov_lines("inlines", ["10"], "inlines/inlines.c", tmp_path)
    source = (ROOT / "sample_targets/inlines/inlines.c").read_text().splitlines()
    helper_body = next(n for n, text in enumerate(source, 1) if "sink = i * 3 + 1" in text)
    rare_body = next(n for n, text in enumerate(source, 1) if "is too large" in text)
    assert ours[helper_body] == expected[helper_body] == 10
    assert ours[rare_body] == expected[rare_body] == 0
    # Every line both measure agrees on whether it ran.
    assert {n for n in ours if n in expected and (ours[n] > 0) != (expected[n] > 0)} == set()
