"""The report-at-scale bench: a generated program of 50,000 functions and 300,000 lines
(bench/big_program.py), and one of 500,000 when the machine can build it, covered with
--lines; then the report written again from its data file.

Figures, each of repeated runs as median (min-max):
- the run's phases, timed from outside: start to "Tracing" (index and attach), and from
  then to bpfcov's exit (the program runs for milliseconds: detach, data file, reports);
- `bpfcov report` with the default formats, with the reference graph cached (as it is
  after the run) and once without (the first report of a build never traced before);
- the sizes of index.html, functions.js and all of html/;
- Chromium's time to load and paint the index: a headless screenshot of it, less one of an
  empty page, interleaved.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.big_program import build
from bench.figures import summarize

BPFCOV = [sys.executable, "-m", "bpfcov"]
# 500,000 functions need 5,000 compiler runs and 3.5 million line probes: built only on a
# machine with the memory and the time for it.
LARGE = 500_000
LARGE_MIN_MEMORY_GIB = 16
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--window-size=1280,1000"]


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _traced_run(program: Path, out: Path, env: dict) -> tuple[float, float]:
    """(seconds to "Tracing", seconds from then to bpfcov's exit) of one run. The program
    itself runs for milliseconds: the second is detach, the data file and the reports."""
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    proc = subprocess.Popen(BPFCOV + ["run", "--lines", "-o", str(out), "--source-root", str(program.parent), "--",
                                      str(program)], stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stderr is not None
    tracing = None
    for line in proc.stderr:
        if tracing is None and "Tracing" in line:
            tracing = time.perf_counter()
    proc.wait()
    end = time.perf_counter()
    if proc.returncode != 0 or tracing is None:
        raise RuntimeError(f"bench: bpfcov run on {program} failed ({proc.returncode})")
    return tracing - start, end - tracing


def _report(data: Path, out: Path, env: dict) -> float:
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    subprocess.run(BPFCOV + ["report", str(data), "-o", str(out), "--source-root", str(data.parent.parent)],
                   check=True, capture_output=True, env=env)
    return time.perf_counter() - start


def _screenshot(url: str, tmp: Path) -> float:
    chromium = _chromium()
    assert chromium is not None
    profile = tmp / "chromium-profile"
    shutil.rmtree(profile, ignore_errors=True)
    start = time.perf_counter()
    subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={tmp / 'shot.png'}", url],
                   check=True, capture_output=True, timeout=300)
    return time.perf_counter() - start


def _paint(index: Path, runs: int, tmp: Path) -> dict | str:
    if _chromium() is None:
        return "chromium is not installed"
    empty = tmp / "empty.html"
    empty.write_text("<!DOCTYPE html><title>empty</title>")
    page, blank = [], []
    for _ in range(runs):  # interleaved: the same load on both
        page.append(_screenshot(index.as_uri(), tmp))
        blank.append(_screenshot(empty.as_uri(), tmp))
    return {"index": summarize(page), "empty": summarize(blank),
            "difference": summarize([p - b for p, b in zip(page, blank)])}


def _memory_gib() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


def big_row(functions: int, runs: int, tmp: Path) -> dict:
    folder = tmp / f"big{functions}"
    start = time.perf_counter()
    program = build(functions, folder)
    built = time.perf_counter() - start
    env = dict(os.environ, XDG_CACHE_HOME=str(folder / "cache"))
    out = folder / "out"
    phases = [_traced_run(program, out, env) for _ in range(runs)]
    data = out / "bpfcov.db"
    warm = [_report(data, folder / "report", env) for _ in range(runs)]
    shutil.rmtree(folder / "cache", ignore_errors=True)  # the graph and the probe index
    cold = _report(data, folder / "report", env)
    html = folder / "report" / "html"
    lines = int(subprocess.run([sys.executable, "-c", "import sys; from bpfcov.data import store; "
                                "print(sum(len(o.index.lines) for o in store.read(sys.argv[1]).objects))", str(data)],
                               capture_output=True, text=True, check=True, env=env).stdout)
    return {
        "functions": functions, "line_addresses": lines, "build_seconds": built,
        "to_tracing_seconds": summarize([p[0] for p in phases]), "wind_up_seconds": summarize([p[1] for p in phases]),
        "report_seconds": summarize(warm), "report_cold_seconds": cold,
        "data_file_bytes": data.stat().st_size,
        "index_bytes": (html / "index.html").stat().st_size,
        "functions_js_bytes": (html / "functions.js").stat().st_size,
        "html_bytes": sum(p.stat().st_size for p in html.iterdir()),
        "paint": _paint(html / "index.html", runs, tmp),
    }


def big_rows(quick: bool, runs: int, tmp: Path) -> dict:
    rows = [big_row(2000 if quick else 50_000, runs, tmp)]
    note = None
    if quick:
        note = "quick run: the large row is not measured"
    elif _memory_gib() < LARGE_MIN_MEMORY_GIB:
        note = f"{LARGE:,} functions: not measured, this machine has {_memory_gib():.0f} GiB"
    else:
        rows.append(big_row(LARGE, 1, tmp))
    return {"rows": rows, "note": note}


def markdown(r: dict) -> list[str]:
    def cell(s: dict, digits: int = 2) -> str:
        return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}–{s['max']:.{digits}f})"

    def mib(n: int) -> str:
        return f"{n / 2**20:.1f}"

    lines = ["", "## Reports for big programs", "",
             "A generated C program (bench/big_program.py, -O0 -g, every tenth function called) covered with "
             "`--lines`, then `bpfcov report` from its data file with the default formats (html, json, lcov). "
             "Run phases are timed from outside: start to \"Tracing\" (index and attach), then to bpfcov's exit "
             "(the program runs for milliseconds: detach, data file, reports). Report \"warm\" has the "
             "reference graph cached, as every report after the run does; \"cold\" reads the binary's code "
             "again. Paint is a headless Chromium screenshot of the index less one of an empty page, interleaved. "
             "Seconds, median (min–max).", "",
             "| functions | line addresses | run: to Tracing | run: wind-up | report, warm | report, cold | "
             "data file MiB | index.html MiB | functions.js MiB | html/ MiB | paint s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in r["rows"]:
        paint = row["paint"]
        lines.append(f"| {row['functions']:,} | {row['line_addresses']:,} | {cell(row['to_tracing_seconds'])} | "
                     f"{cell(row['wind_up_seconds'])} | {cell(row['report_seconds'])} | "
                     f"{row['report_cold_seconds']:.2f} | {mib(row['data_file_bytes'])} | {mib(row['index_bytes'])} | "
                     f"{mib(row['functions_js_bytes'])} | {mib(row['html_bytes'])} | "
                     f"{cell(paint['difference']) if isinstance(paint, dict) else paint} |")
    if r["note"]:
        lines += ["", r["note"] + "."]
    return lines
