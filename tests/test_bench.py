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
    assert [r["probes"] // 100 for r in results["attach"]] == [1, 10]  # N functions plus main and crt
    assert set(results["outside"]) == {"same binary", "libc code"}
    assert results["pytest"]["probes"] > 100_000
    assert results["accuracy"]["count"]["missed"] == []
    assert results["accuracy"]["gcov"]["counts_equal"] == results["accuracy"]["gcov"]["functions_compared"] > 100
    text = (tmp_path / "RESULTS.md").read_text()
    for heading in ("sqlite workload", "counted hit", "Attach and detach", "outside the trace", "test runner",
                    "Indexing", "Reports", "Accuracy"):
        assert heading in text
