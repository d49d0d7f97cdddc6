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
import sys
from pathlib import Path

import pytest
from conftest import ROOT, bpfcov, coverage_json, target

from bpfcov.probes.index import index_object

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
    assert '<span class="h">' in html and '<span class="u">' in html  # runs of lines that ran, and never ran


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


DISPATCH = "dispatch/dispatch.c"


@pytest.mark.parametrize("flavour", ["O0", "O2"])
@pytest.mark.parametrize("args", [["switch", "7"], ["goto", "12+3*ip"], ["jump"]], ids=" ".join)
def test_block_probes_see_jump_tables_computed_gotos_and_calls_that_never_return(bpf, tmp_path, args, flavour):
    """One probe per basic block stands for its lines (probes/blocks.py). Where control
    enters a block other than at its start, through a switch's jump table or a computed
    goto, or leaves it early, through a call that never returns (longjmp), a wrong block
    would call lines dead or live that gcov says otherwise. gcov also counts a switch's
    jump on each `case` label, and a goto on its label: lines without code, that the line
    table gives no address. At -O2 the line table is compared with itself: the counts of
    one probe per line at its own address (BPFCOV_PROBE_EVERY_LINE)."""
    expected, declarations = gcov_lines("dispatch", args, DISPATCH, tmp_path)
    text = (ROOT / "sample_targets" / DISPATCH).read_text().splitlines()
    runs = {}
    for every_line in (False, True):
        out = tmp_path / f"out-{every_line}"
        env = dict(os.environ, **({"BPFCOV_PROBE_EVERY_LINE": "1"} if every_line else {}))
        bpfcov("run", "-q", "--lines", "--mode", "count", "-o", out, "--", target(flavour, "dispatch"), *args,
               check=False, env=env)
        runs[every_line] = bpfcov_lines(coverage_json(out), DISPATCH)
    assert runs[False] == runs[True]
    ours = runs[False]
    if flavour == "O0":
        both = expected.keys() & ours.keys()
        assert len(both) >= 20
        mismatched = {n: (expected[n], ours[n]) for n in both if (expected[n] > 0) != (ours[n] > 0)}
        assert not mismatched, f"gcov vs bpfcov hit status differs on lines {mismatched}"
        labels = {n for n in set(expected) - set(ours) if re.fullmatch(r"\s*(case \d+|default|\w+):\s*", text[n - 1])}
        assert set(expected) - set(ours) - labels <= declarations
    if args == ["jump"]:
        after = next(n for n, t in enumerate(text, 1) if "never_after_leave++;" in t)
        assert ours[after] == 0 and ours[after - 1] == 1  # leave() ran; the line after it never did


REAL_OBJECTS = [
    # (name, command, mode, --libs): the workload prints its own time, which libc's float
    # formatting follows differently from run to run, so only its own object is compared.
    ("sqlite", [str(ROOT / "sample_targets/build/sqlite/workload"), "100"], "count", False),
    ("python3", ["/usr/bin/python3.11", "-c", "import json, sqlite3; print(json.dumps([1]))"], "hit", True),
]


@pytest.mark.parametrize("command,mode,libs", [r[1:] for r in REAL_OBJECTS], ids=[r[0] for r in REAL_OBJECTS])
def test_block_probes_tell_what_a_probe_on_every_line_tells_on_real_objects(bpf, tmp_path, monkeypatch, command, mode,
                                                                            libs):
    """sqlite at -O2 (its VDBE loop is a jump table of 190 cases, with cold parts that jump
    back into it) and the Python interpreter with glibc and the libraries it loads (its
    eval loop's computed gotos leave that function with a probe on each line): every
    line's count, or in hit mode whether it ran, is the same with one probe per basic
    block as with one probe on every line. Blocks also tell lines whose own instruction
    cannot be probed: those only they measure."""
    runs = []
    for every_line in (False, True):
        out = tmp_path / f"out-{every_line}"
        # The same environment in both runs, byte for byte (the loader and the interpreter
        # read it), fixed hashes and no address randomization: nothing else may differ.
        env = dict(os.environ, BPFCOV_PROBE_EVERY_LINE=str(int(every_line)), PYTHONHASHSEED="0")
        result = subprocess.run(["setarch", "x86_64", "-R", sys.executable, "-m", "bpfcov", "run", "-q", "--lines",
                                 *(["--libs"] if libs else []), "--mode", mode, "-o", out, "--", *command],
                                capture_output=True, text=True, env=env, timeout=600)
        assert result.returncode == 0, result.stderr
        lines = {(o["path"], line["file"], line["line"]): line["count"]
                 for o in coverage_json(out)["objects"] for line in o["lines"]}
        runs.append(lines if mode == "count" else {k: v > 0 for k, v in lines.items()})
    blocks, every_line = runs
    assert len(every_line) > 20_000 and sum(1 for v in every_line.values() if v) > 5_000
    assert blocks.keys() >= every_line.keys()
    # A line compiled into several functions (glibc's memcpy variants for each CPU) may
    # have rows only blocks measure; those lines are compared where both measure the same.
    same_rows = set()
    for path in {path for path, _, _ in every_line}:
        rows = []
        for flag in ("0", "1"):
            monkeypatch.setenv("BPFCOV_PROBE_EVERY_LINE", flag)
            lines = index_object(path, lines=True, quiet=True).lines
            by_line: dict = {}
            for address, f, n in zip(lines.address.tolist(), lines.file.tolist(), lines.line.tolist()):
                by_line.setdefault((lines.files[f], n), set()).add(address)
            rows.append(by_line)
        same_rows |= {(path, *key) for key, found in rows[1].items() if rows[0].get(key) == found}
    compared = same_rows & every_line.keys()
    assert len(compared) > 0.9 * len(every_line)
    assert {k: blocks[k] for k in compared} == {k: every_line[k] for k in compared}
    # Lines the blocks measure more rows of: none that ran is said not to.
    assert not [k for k, v in every_line.items() if v and not blocks[k]]
