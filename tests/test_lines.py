"""Line coverage (--lines) against gcov's executed lines on the -O0 sample targets.

gcov and the DWARF line table do not describe exactly the same lines, for reasons that
are known and checked here rather than ignored:
- gcov puts a function's entry on its declaration line (`int f(void)`); gcc's line table
  puts the prologue on the line of the opening brace. So gcov's declaration lines have no
  address in the line table, and the brace lines are ours alone.
- gcov has no line for a closing brace; the line table gives the epilogue one.
- C++ compiler-generated members (implicit destructors, vtable thunks) sit on the line of
  their class head; gcov leaves these artificial functions out.
Every other line both know must agree: hit in one exactly when hit in the other.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT, bpfcov, coverage_json, target

CASES = [
    ("shapes", ["fact", "5"], "shapes/shapes.c"),
    ("shapes", ["apply", "double", "3"], "shapes/shapes.c"),
    ("shapes", ["area", "square", "2"], "shapes/shapes.c"),
    ("inventory", ["bad"], "inventory/inventory.cpp"),
    ("forker", ["3"], "forker/forker.c"),
    ("threads", ["3", "100"], "threads/threads.c"),
]


def gcov_lines(name: str, args: list[str], source: str, tmp_path: Path) -> tuple[dict[int, int], set[int]]:
    """(line -> count, declaration lines of the functions) for one source file, from gcov."""
    prefix = tmp_path / "gcov"
    env = dict(os.environ, GCOV_PREFIX=str(prefix))
    subprocess.run([target("gcov", name), *args], capture_output=True, env=env, timeout=120)
    lines: dict[int, int] = {}
    declarations: set[int] = set()
    for gcda in prefix.rglob("*.gcda"):
        gcno = Path(str(gcda).replace(str(prefix), "", 1)).with_suffix(".gcno")
        (gcda.with_suffix(".gcno")).write_bytes(gcno.read_bytes())
        out = subprocess.run(["gcov", "--json-format", "--stdout", gcda.name], cwd=gcda.parent,
                             capture_output=True, text=True, check=True).stdout
        for f in json.loads(out)["files"]:
            if f["file"] != str(ROOT / "sample_targets" / source):
                continue
            for line in f["lines"]:
                lines[line["line_number"]] = lines.get(line["line_number"], 0) + line["count"]
            declarations |= {fn["start_line"] for fn in f["functions"]}
    return lines, declarations


def bpfcov_lines(report: dict, source: str) -> dict[int, int]:
    lines: dict[int, int] = {}
    for obj in report["objects"]:
        for line in obj["lines"]:
            if line["file"] == str(ROOT / "sample_targets" / source):
                lines[line["line"]] = max(lines.get(line["line"], 0), line["count"])
    return lines


def known_to_line_table_only(text: str) -> bool:
    """A brace line, or a class head (where compiler-generated members are placed)."""
    return re.fullmatch(r"\s*[{}]\s*;?\s*", text) is not None or re.match(r"\s*(class|struct)\b", text) is not None


@pytest.mark.parametrize("mode", ["count", "hit"])
@pytest.mark.parametrize("name,args,source", CASES, ids=[f"{n} {' '.join(a)}" for n, a, _ in CASES])
def test_line_hits_equal_gcov_executed_lines(bpf, tmp_path, name, args, source, mode):
    expected, declarations = gcov_lines(name, args, source, tmp_path)
    assert expected, "gcov saw no lines"
    out = tmp_path / "out"
    bpfcov("run", "-q", "--lines", "--mode", mode, "-o", out, "--", target("O0", name), *args, check=False)
    report = coverage_json(out)
    ours = bpfcov_lines(report, source)
    text = (ROOT / "sample_targets" / source).read_text().splitlines()

    both = expected.keys() & ours.keys()
    assert len(both) >= 5
    mismatched = {n: (expected[n], ours[n]) for n in both if (expected[n] > 0) != (ours[n] > 0)}
    assert not mismatched, f"gcov vs bpfcov hit status differs on lines {mismatched}"
    # gcov lines we do not measure: declaration lines only (no address in the line table).
    assert set(expected) - set(ours) <= declarations
    # Lines we measure that gcov does not: braces and class heads only.
    for n in set(ours) - set(expected):
        assert known_to_line_table_only(text[n - 1]), f"line {n} ({text[n - 1]!r}) is ours alone"
    # A function is hit exactly when one of its lines is.
    hit_lines = {n for n, c in ours.items() if c > 0}
    for obj in report["objects"]:
        for f in obj["functions"]:
            if f["file"] == str(ROOT / "sample_targets" / source) and f["status"] != "unmeasured":
                assert (f["status"] == "hit") == (f["line"] in hit_lines), f["name"]


def test_line_counts_are_exact_in_count_mode(bpf, tmp_path):
    expected, _ = gcov_lines("threads", ["4", "250"], "threads/threads.c", tmp_path)
    out = tmp_path / "out"
    bpfcov("run", "-q", "--lines", "--mode", "count", "-o", out, "--", target("O0", "threads"), "4", "250")
    ours = bpfcov_lines(coverage_json(out), "threads/threads.c")
    work_body = next(n for n, t in enumerate((ROOT / "sample_targets/threads/threads.c").read_text().splitlines(), 1)
                     if "return x * 3 + 1;" in t)
    assert ours[work_body] == expected[work_body] == 1000


def test_lcov_da_records_are_the_measured_lines(bpf, tmp_path):
    out = tmp_path / "out"
    bpfcov("run", "-q", "--lines", "-o", out, "--source-root", ROOT, "--", target("O0", "shapes"), "fact", "3")
    report = coverage_json(out)
    info = (out / "coverage.info").read_text()
    da = {int(m.group(1)): int(m.group(2)) for m in re.finditer(r"^DA:(\d+),(\d+)$", info, re.M)}
    assert da.keys() == bpfcov_lines(report, "shapes/shapes.c").keys()
    summary = subprocess.run(["lcov", "--summary", out / "coverage.info"], capture_output=True, text=True).stdout
    lines_total = int(re.search(r"lines\.+: [\d.]+% \(\d+ of (\d+)", summary).group(1))
    assert lines_total == report["totals"]["lines"] == len(da)
    html = "".join(p.read_text() for p in (out / "html").glob("file*.html"))
    assert '<tr id="L' in html and 'class="hit"' in html and 'class="unhit"' in html


def test_a_large_object_with_lines_finishes_and_its_report_opens(bpf, tmp_path):
    """The Python interpreter's debug build (python3.11-dbg: 11,000 functions, 180,000 line
    probes, full DWARF) covered with --lines while it imports json."""
    interpreter = "/usr/bin/python3.11d"
    if not os.path.exists(interpreter):
        pytest.fail("python3.11-dbg is not installed (scripts/setup-system.sh installs it)")
    out = tmp_path / "out"
    result = bpfcov("run", "-q", "--lines", "-o", out, "--", interpreter, "-c", "import json; print(json.dumps([1]))",
                    timeout=600)
    assert result.stdout == "[1]\n"
    report = coverage_json(out)
    assert report["totals"]["functions_hit"] > 1000 and report["totals"]["lines_hit"] > 10_000
    from bpfcov.data import store
    assert store.read(str(out / "bpfcov.db")).stats["peak_rss_kib"] < 500 * 1024
    from test_reports import browser_dump
    dom, _ = browser_dump(out / "html" / "index.html", tmp_path)
    assert "Never-executed functions" in dom and "PyImport_ImportModule" in dom
