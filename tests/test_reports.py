"""Reports, with the real readers as the oracle: lcov, genhtml, lcov_cobertura, diff-cover,
and a headless browser for the HTML."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, bpfcov, coverage_json, require_bpf, target

from bpfcov.data import store
from bpfcov.data.model import ObjectCoverage, RunCoverage
from bpfcov.probes.model import Function, LineTable, ObjectIndex, ProbeStatus
from bpfcov.report.pipeline import ReportOptions, build_report
from bpfcov.report.treemap import Rect, squarify
from bpfcov.report.writers import write_reports

GOLDEN = Path(__file__).parent / "golden"

READER_CASES = [("shapes", ["fact", "3"]), ("inventory", ["list"]), ("forker", ["2"]), ("hostile", [])]


@pytest.fixture(scope="module")
def traced_outputs(tmp_path_factory):
    """One count-mode run of each sample target, all formats (needs BPF)."""
    require_bpf()
    outputs = {}
    for name, args in READER_CASES:
        out = tmp_path_factory.mktemp(name)
        bpfcov("run", "-q", "-o", out, "--mode", "count", "--format", "lcov,html,json,cobertura",
               "--source-root", ROOT, "--", target("O0", name), *args, cwd=ROOT)
        outputs[name] = out
    return outputs


def lcov_totals_from_json(report: dict) -> tuple[int, int]:
    """(functions, functions hit) as lcov counts them: measured functions with a source file,
    each with its calls and inlined runs."""
    names: dict[tuple[str, str], int] = {}
    for obj in report["objects"]:
        for f in obj["functions"]:
            if f["file"] is not None and f["status"] not in ("unmeasured", "no-code"):
                key = (f["file"], re.sub(r"[\x00-\x20,\x7f]", "_", f["name"]))
                names[key] = names.get(key, 0) + f["count"] + f["inlined_count"]
    return len(names), sum(1 for c in names.values() if c > 0)


def run_tool(args, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(args, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{args[0]} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.mark.parametrize("name", [n for n, _ in READER_CASES])
def test_lcov_summary_reads_it_without_warning_and_agrees(traced_outputs, name):
    out = traced_outputs[name]
    result = run_tool(["lcov", "--summary", out / "coverage.info"])
    text = result.stdout + result.stderr
    assert "WARNING" not in text.upper()
    functions, hit = map(int, re.search(r"functions\.+: [\d.]+% \((\d+) of (\d+)", text).groups()[::-1])
    assert (functions, hit) == lcov_totals_from_json(coverage_json(out))


@pytest.mark.parametrize("name", [n for n, _ in READER_CASES])
def test_lcov_add_and_genhtml_accept_it(traced_outputs, tmp_path, name):
    info = traced_outputs[name] / "coverage.info"
    merged = tmp_path / "merged.info"
    result = run_tool(["lcov", "-a", info, "-a", info, "-o", merged])
    assert "WARNING" not in (result.stdout + result.stderr).upper()
    result = run_tool(["genhtml", "--ignore-errors", "source", "-o", tmp_path / "genhtml", info])
    assert "WARNING" not in (result.stdout + result.stderr).upper().replace("--IGNORE-ERRORS", "")
    assert (tmp_path / "genhtml" / "index.html").exists()


@pytest.mark.parametrize("name", [n for n, _ in READER_CASES])
def test_lcov_cobertura_converts_it_and_agrees(traced_outputs, tmp_path, name):
    out = traced_outputs[name]
    xml = tmp_path / "converted.xml"
    run_tool([Path(sys.executable).parent / "lcov_cobertura", out / "coverage.info", "-o", xml])
    root = ET.parse(xml).getroot()
    ours = ET.parse(out / "coverage.xml").getroot()
    assert root.get("lines-valid") == ours.get("lines-valid")
    assert root.get("lines-covered") == ours.get("lines-covered")


def test_diff_cover_parses_it_and_reports_the_changed_lines(traced_outputs, tmp_path):
    repo = tmp_path / "repo"
    (repo / "src").mkdir(parents=True)
    shutil.copy(ROOT / "sample_targets/shapes/shapes.c", repo / "src/shapes.c")
    git = ["git", "-C", repo, "-c", "user.name=t", "-c", "user.email=t@t"]
    run_tool(git[:3] + ["init", "-q", "-b", "main"])
    run_tool(git + ["add", "."])
    run_tool(git + ["commit", "-qm", "base"])
    run_tool(git[:3] + ["checkout", "-qb", "change"])
    text = (repo / "src/shapes.c").read_text().splitlines(keepends=True)
    source = (ROOT / "sample_targets/shapes/shapes.c").read_text().splitlines()
    fact_line = next(i for i, text in enumerate(source, 1) if text.startswith("unsigned long factorial"))
    # Touch the lines factorial's and triangle_area's DA records stand on.
    data = coverage_json(traced_outputs["shapes"])
    lines = {f["name"]: f["line"] for o in data["objects"] for f in o["functions"]}
    for n in (lines["factorial"], lines["triangle_area"]):
        text[n - 1] = text[n - 1].rstrip("\n") + " /* touched */\n"
    (repo / "src/shapes.c").write_text("".join(text))
    run_tool(git + ["commit", "-qam", "touch"])
    info = tmp_path / "coverage.info"
    bpfcov("report", traced_outputs["shapes"] / "bpfcov.db", "-o", tmp_path / "rep", "--format", "lcov",
           "--path-map", f"{ROOT}/sample_targets/shapes={repo}/src")
    shutil.copy(tmp_path / "rep/coverage.info", info)
    report = tmp_path / "diff.json"
    run_tool([Path(sys.executable).parent / "diff-cover", info, "--compare-branch=main", f"--json-report={report}"],
             cwd=repo)
    result = json.loads(report.read_text())
    stats = result["src_stats"]["src/shapes.c"]
    assert sorted(stats["covered_lines"]) == [lines["factorial"]]
    assert sorted(stats["violation_lines"]) == [lines["triangle_area"]]
    assert fact_line <= lines["factorial"] <= fact_line + 1


def test_cobertura_is_wellformed_and_totals_agree(traced_outputs):
    out = traced_outputs["inventory"]
    root = ET.parse(out / "coverage.xml").getroot()
    totals = coverage_json(out)["totals"]
    assert int(root.get("lines-valid")) == totals["lines"]
    assert int(root.get("lines-covered")) == totals["lines_hit"]


# -- hostile input -----------------------------------------------------------------------

def test_hostile_names_stay_text_and_lcov_records_stay_whole(traced_outputs):
    out = traced_outputs["hostile"]
    info = (out / "coverage.info").read_text()
    for line in info.splitlines():
        assert re.match(r"^(TN:|SF:|FN:\d+,\S+$|FNDA:\d+,\S+$|FNF:\d+$|FNH:\d+$|DA:\d+,\d+$|LF:\d+$|LH:\d+$|"
                        r"end_of_record$)", line), line
    assert "FNDA:1,weird_name" in info
    page = (out / "html" / "index.html").read_text()
    assert "<img src=x" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "it&#39;s &amp; &lt;b&gt;" in page


def test_no_source_outside_source_root_is_read(traced_outputs):
    out = traced_outputs["hostile"]
    pages = "".join(p.read_text() for p in (out / "html").glob("*.html"))
    assert "/etc/shadow" in pages  # named...
    with open("/etc/shadow") as f:
        secret_lines = [text.strip() for text in f if text.strip()]
    for line in secret_lines[:5]:
        assert line not in pages  # ...but never read
    assert "it is outside --source-root, so it was not read" in pages


# -- the HTML in a real browser ----------------------------------------------------------

def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("chromium is not installed (scripts/setup-system.sh installs it)")


def browser_dump(page: Path, tmp_path: Path) -> tuple[str, str]:
    """(DOM after scripts ran, browser log) for `page` opened from file://."""
    result = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
         "--virtual-time-budget=2000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120)
    return result.stdout, result.stderr


def test_html_renders_in_chromium_without_console_errors(traced_outputs, tmp_path):
    page = traced_outputs["inventory"] / "html" / "index.html"
    dom, log = browser_dump(page, tmp_path)
    assert "Never-executed functions" in dom
    assert "inv::Gadget::value() const" in dom
    console_errors = [row for row in log.splitlines() if "CONSOLE" in row and ("ERROR" in row or "Uncaught" in row)]
    assert not console_errors, console_errors


def test_html_screenshot_is_drawn(traced_outputs, tmp_path):
    page = traced_outputs["inventory"] / "html" / "index.html"
    shot = tmp_path / "shot.png"
    subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,1600",
                    f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=120)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000  # a real, non-blank picture


def test_source_pages_mark_hit_and_unhit_functions(traced_outputs):
    pages = list((traced_outputs["shapes"] / "html").glob("file*.html"))
    assert pages
    text = pages[0].read_text()
    assert 'class="status hit"' in text and 'class="status unhit"' in text
    assert "factorial" in text


# -- golden files, from data made by hand (no BPF needed) --------------------------------

def synthetic_run(lines: bool = False) -> RunCoverage:
    functions = [
        Function("main", "main", 0x1000, 0x1000, 40, "/src/app.c", 10, 20, (), ProbeStatus.ENTRY, 0x1000,
                 inlined_offsets=((0x1100,),), inlined_instances=1),
        Function("_ZN3app4deadEv", "app::dead()", 0x1040, 0x1040, 300, "/src/app.c", 30, 40,
                 ("_ZN3app4deadEv.localalias",), ProbeStatus.ENTRY, 0x1040),
        Function("helper", "helper", 0x1200, 0x1200, 16, "/src/util/helper.c", 5, 7, (), ProbeStatus.MOVED, 0x1204,
                 "first instruction refused (lock prefix); probed at +4"),
        Function("locked", "locked", 0x1300, 0x1300, 8, None, None, None, (), ProbeStatus.UNMEASURED, None,
                 "first two instructions refused"),
        Function("_start", "_start", 0x900, 0x900, 34, None, None, None, (), ProbeStatus.ENTRY, 0x900),
        # main also ran 4 times where it was inlined (into a test harness, say).
        # square exists only inlined, twice; clamp was computed away everywhere.
        Function("square", "square", 0x1008, 0x1008, 12, "/src/util/helper.c", 20, None, (), ProbeStatus.INLINED,
                 None, out_of_line=False, inlined_offsets=((0x1008,), (0x1044, 0x1050)), inlined_instances=2),
        Function("clamp", "clamp", 0, 0, 0, "/src/util/helper.c", 30, None, (), ProbeStatus.NO_CODE, None,
                 "inlined everywhere and computed away", out_of_line=False),
    ]
    table = None
    line_counts = None
    if lines:
        table = LineTable(["/src/app.c", "/src/util/helper.c"],
                          np.array([0x1000, 0x1010, 0x1040, 0x1050, 0x1200], dtype=np.uint64),
                          np.array([0x1000, 0x1010, 0x1040, 0x1050, 0x1200], dtype=np.uint64),
                          np.array([0, 0, 0, 0, 1], dtype=np.int32), np.array([10, 12, 30, 31, 5], dtype=np.int32),
                          np.array([0, 0, 1, 1, 2], dtype=np.int32))
        line_counts = np.array([1, 3, 0, 0, 2], dtype=np.int64)
    index = ObjectIndex("/bin/app", "abc123", functions, table, [], None)
    return RunCoverage(mode="count", command=["/bin/app", "--flag"], started=1_700_000_000.0,
                       ended=1_700_000_002.5, host="testhost", kernel="6.18", lines=lines,
                       objects=[ObjectCoverage(index, np.array([1, 0, 7, 0, 1, 0, 0], dtype=np.int64), line_counts,
                                               np.array([4, 0, 0, 0, 0, 9, 0], dtype=np.int64))],
                       bpfcov_version="test", stats={"attach_method": "uprobe-multi"})


@pytest.mark.parametrize("lines", [False, True], ids=["functions", "lines"])
def test_golden_lcov_and_json(tmp_path, lines):
    report = build_report(synthetic_run(lines), ReportOptions(path_maps=[("/src/util", "/work/util")]))
    write_reports(report, str(tmp_path), ["lcov", "json"], source_root=str(tmp_path))
    suffix = "lines" if lines else "functions"
    for produced, golden in ((tmp_path / "coverage.info", GOLDEN / f"{suffix}.info"),
                             (tmp_path / "coverage.json", GOLDEN / f"{suffix}.json")):
        if os.environ.get("BPFCOV_UPDATE_GOLDEN") == "1":
            shutil.copy(produced, golden)
        assert produced.read_text() == golden.read_text(), f"{produced.name} differs from {golden}"


def test_unmeasured_and_no_code_functions_are_not_written_as_dead():
    report = build_report(synthetic_run())
    t = report.totals
    assert (t.functions, t.functions_hit, t.functions_unmeasured, t.functions_no_code) == (7, 4, 1, 1)
    assert t.functions_measured == 5
    assert t.dead_bytes == 300  # only app::dead()


def test_a_function_that_exists_only_inlined_adds_no_bytes_of_its_own():
    """Its code lies inside its callers', whose bytes count it already."""
    run = synthetic_run()
    run.objects[0].inlined_counts[:] = 0  # square's instances never ran
    report = build_report(run)
    square = next(f for o in report.objects for f in o.functions if f.name == "square")
    assert (square.status, square.size, square.own_bytes) == ("unhit", 12, 0)
    assert report.totals.dead_bytes == 300 == report.objects[0].dead_bytes


def test_relative_paths(tmp_path):
    report = build_report(synthetic_run(), ReportOptions(relative_to="/src"))
    assert [s.path for s in report.files] == ["app.c", "util/helper.c"]


def test_data_file_round_trip(tmp_path):
    run = synthetic_run(lines=True)
    store.write(str(tmp_path / "a.db"), run)
    back = store.read(str(tmp_path / "a.db"))
    assert back.objects[0].index.functions == run.objects[0].index.functions
    assert (back.objects[0].function_counts == run.objects[0].function_counts).all()
    assert (back.objects[0].line_counts == run.objects[0].line_counts).all()
    assert (back.mode, back.command, back.lines) == (run.mode, run.command, run.lines)


def test_squarify_fills_the_box_with_proportional_areas():
    values = [50, 30, 10, 6, 4]
    rects = squarify(values, Rect(0, 0, 100, 50))
    assert sum(r.w * r.h for r in rects) == pytest.approx(5000)
    for v, r in zip(values, rects):
        assert r.w * r.h == pytest.approx(5000 * v / 100)
        assert 0 <= r.x and r.x + r.w <= 100.0001 and 0 <= r.y and r.y + r.h <= 50.0001


def test_fail_under_exits_2_after_writing_reports(tmp_path):
    store.write(str(tmp_path / "a.db"), synthetic_run())
    result = bpfcov("report", tmp_path / "a.db", "-o", tmp_path / "out", "--fail-under", "90", check=False)
    assert result.returncode == 2
    assert (tmp_path / "out" / "coverage.info").exists()
    assert bpfcov("report", tmp_path / "a.db", "-o", tmp_path / "out2", "--fail-under", "50").returncode == 0


def test_report_include_and_exclude(tmp_path):
    store.write(str(tmp_path / "a.db"), synthetic_run())
    bpfcov("report", tmp_path / "a.db", "-o", tmp_path / "out", "--format", "json", "--include", "^(main|helper)$",
           "--exclude", "helper")
    names = [f["name"] for o in coverage_json(tmp_path / "out")["objects"] for f in o["functions"]]
    assert names == ["main"]


# -- reports written side by side (bpfcov/parallel.py) -----------------------------------

def _files_under(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_reports_written_side_by_side_equal_those_written_one_after_another(tmp_path, monkeypatch):
    """The command line writes the HTML report in forked children beside the other
    formats; the same data written in one process, one format after another, must give
    the same bytes. On a real run: glibc, and a C program's source pages."""
    require_bpf()
    traced = tmp_path / "traced"
    bpfcov("run", "-q", "--lines", "--libs", "-o", traced, "--format", "json", "--source-root", ROOT, "--",
           target("O0", "shapes"), "fact", "3", cwd=ROOT)
    formats = ["html", "json", "lcov", "cobertura"]
    bpfcov("report", traced / "bpfcov.db", "-o", tmp_path / "side", "--format", ",".join(formats),
           "--source-root", ROOT)

    from bpfcov import parallel
    from bpfcov.api import load
    monkeypatch.setattr(parallel, "can_fork", lambda: False)
    load(str(traced / "bpfcov.db")).write(str(tmp_path / "serial"), formats, source_root=str(ROOT))

    # And with the plans made before anything is written, as build_report does by default.
    write_reports(build_report(store.read(str(traced / "bpfcov.db"))), str(tmp_path / "planned"), formats,
                  source_root=str(ROOT))

    side, serial = _files_under(tmp_path / "side"), _files_under(tmp_path / "serial")
    planned = _files_under(tmp_path / "planned")
    report = coverage_json(tmp_path / "side")
    assert any("libc.so" in o["path"] for o in report["objects"])
    assert any(f["prune"] for o in report["objects"] for f in o["functions"])  # plans were made
    assert any(name.startswith("html/file") for name in side)  # source pages were written
    assert side.keys() == serial.keys() == planned.keys()
    assert [name for name in side if side[name] != serial[name] or side[name] != planned[name]] == []


def _pytest_can_fork() -> None:
    from bpfcov import parallel
    assert parallel.can_fork(), "these tests need two CPUs and a pytest without threads"


def test_a_failure_in_a_forked_writer_is_one_error_and_leaves_no_temporary_files(tmp_path, monkeypatch):
    from bpfcov.errors import BpfcovError
    from bpfcov.report.formats import html
    _pytest_can_fork()

    def disk_full(report, out_dir, sources):  # in the child that writes the source pages
        (Path(out_dir) / "file0000.html").write_text("half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(html, "write_source_pages", disk_full)
    out = tmp_path / "out"
    with pytest.raises(BpfcovError, match=r"cannot write reports to .*: No space left on device"):
        write_reports(build_report(synthetic_run(), plans_later=True), str(out), ["html", "json", "lcov"],
                      source_root=str(tmp_path))
    # lcov and JSON were whole, and are in place; the HTML folder never appeared, half or whole.
    assert sorted(p.name for p in out.iterdir()) == ["coverage.info", "coverage.json"]


def test_an_interrupt_stops_the_forked_writers_and_they_clean_up(tmp_path, monkeypatch):
    """Ctrl-C while the children write: they are stopped, remove their temporary files,
    and are waited for; the interrupt goes on up."""
    from bpfcov.report.formats import html
    _pytest_can_fork()
    started = tmp_path / "child-started"

    def slow_source_pages(report, out_dir, sources):  # in a child
        started.write_text(str(os.getpid()))
        time.sleep(60)

    def interrupted_index(report, out_dir):  # here, once the plans are made
        deadline = time.monotonic() + 30
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        raise KeyboardInterrupt

    monkeypatch.setattr(html, "write_source_pages", slow_source_pages)
    monkeypatch.setattr(html, "write_index", interrupted_index)
    out = tmp_path / "out"
    begun = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        write_reports(build_report(synthetic_run(), plans_later=True), str(out), ["lcov", "html"],
                      source_root=str(tmp_path))
    assert time.monotonic() - begun < 30  # the child did not sleep its minute out
    child = int(started.read_text())
    assert not Path(f"/proc/{child}").exists()  # waited for, not left a zombie
    assert [p.name for p in out.iterdir()] in ([], ["coverage.info"])  # no temporary file or folder


def test_the_plans_are_made_by_write_reports_once_and_only_when_shown(tmp_path, monkeypatch):
    """build_report(plans_later=True) leaves the plans to write_reports, which makes them
    once, while the parts that do not show them are written; for lcov alone, never."""
    from bpfcov.report import pipeline
    made = []
    real_plan = pipeline._plan

    def counted_plan(index, statuses):
        made.append(index.path)
        return real_plan(index, statuses)

    monkeypatch.setattr(pipeline, "_plan", counted_plan)
    later = build_report(synthetic_run(), plans_later=True)
    assert made == [] and later.pending_plans
    write_reports(later, str(tmp_path / "later"), ["json", "html"], source_root=str(tmp_path))
    assert made == ["/bin/app"] and not later.pending_plans
    write_reports(later, str(tmp_path / "again"), ["json"], source_root=str(tmp_path))
    assert made == ["/bin/app"]
    unplanned = build_report(synthetic_run(), plans_later=True)
    write_reports(unplanned, str(tmp_path / "lcov"), ["lcov"], source_root=str(tmp_path))
    assert made == ["/bin/app"] and unplanned.pending_plans


def test_the_garbage_collector_is_paused_only_while_a_report_is_made(tmp_path, monkeypatch):
    import gc

    from bpfcov.report.formats import REPORTERS
    seen = []
    original = REPORTERS["json"].write

    def watching(report, out, context):
        seen.append(gc.isenabled())
        original(report, out, context)

    assert gc.isenabled()
    monkeypatch.setattr(REPORTERS["json"], "write", watching)
    write_reports(build_report(synthetic_run()), str(tmp_path), ["json"], source_root=str(tmp_path))
    assert seen == [False] and gc.isenabled()
    gc.disable()
    try:
        write_reports(build_report(synthetic_run()), str(tmp_path), ["json"], source_root=str(tmp_path))
        assert not gc.isenabled()  # left as the caller had it
    finally:
        gc.enable()
