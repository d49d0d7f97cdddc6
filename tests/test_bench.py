"""The benchmark script runs end to end (tiny sizes, one run each): no timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT


def test_bench_quick_fills_every_section(bpf, tmp_path):
    subprocess.run([sys.executable, ROOT / "bench/run.py", "--quick", "--out", tmp_path], check=True,
                   capture_output=True, timeout=900, cwd=ROOT)
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["workload"]["2000"]) == {"untraced", "hit", "lines", "count"}
    assert results["workload"]["2000"]["hit"]["probes"] > 1000
    assert results["per_hit"]["calls"] == 20_000 and results["per_hit"]["count_us"] > 0
    # N functions plus main and crt, with each attach method; perf-event links one per probe
    assert [(r["method"], r["probes"] // 100) for r in results["attach"]] == \
        [("uprobe-multi", 1), ("perf-event", 1), ("uprobe-multi", 10), ("perf-event", 10)]
    assert all(r["links"] == r["probes"] for r in results["attach"] if r["method"] == "perf-event")
    assert results["removal"]["uprobe-multi"]["median"] > 0 and results["removal"]["perf-event"]["median"] > 0
    assert set(results["outside"]) == {"same binary", "libc code"}
    assert results["pytest"]["probes"] > 100_000
    assert results["debuginfod"]["fetch"]["median"] > 0 and results["debuginfod"]["functions"] > 5000
    assert results["accuracy"]["count"]["missed"] == []
    assert {r["object"] for r in results["blocks"]} == {"sqlite workload"}
    assert all(r["block_probes"] < r["every_line_probes"] for r in results["blocks"])
    assert results["kcov"].startswith("kcov")
    layout = results["layout"]  # pages spanned are counted, not timed: the layout must pack the executed code
    assert layout["executed_functions"] > 400
    assert layout["pages_spanned"]["orderfile"] < layout["pages_spanned"]["lld's own layout"]
    big = results["big"]["rows"][0]
    assert big["functions"] == 2000 and big["line_addresses"] > 10_000 and big["report_seconds"]["median"] > 0
    assert 0 < big["index_bytes"] < big["html_bytes"] and isinstance(big["paint"], dict)
    fleet = results["fleet"]  # every host's pushes went through, and the store has their counts
    assert fleet["pushes"] == fleet["hosts"] * 2 and fleet["function_count_rows"] == fleet["hosts"] * fleet["running"]
    assert results["accuracy"]["gcov"]["counts_equal"] == results["accuracy"]["gcov"]["functions_compared"] > 100
    text = (tmp_path / "RESULTS.md").read_text()
    for heading in ("sqlite workload", "counted hit", "Attach and detach", "Removal of a probe", "outside the trace",
                    "test runner", "Indexing", "one per basic block", "Debug info from debuginfod", "Reports",
                    "Reports for big programs", "A fleet pushing into PostgreSQL", "Code layout", "Accuracy"):
        assert heading in text
