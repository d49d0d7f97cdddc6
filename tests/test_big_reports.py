"""Reports for big binaries: a generated 50,000-function, 300,000-line program covered with
--lines, whose report must stay within its size budget and still let every function be
found; and the caches and data layout that keep such a report fast, checked against
what they replace."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, bpfcov, require_bpf, target
from test_reports import chromium

from bpfcov.data import store
from bpfcov.probes.index import index_object
from bpfcov.prune import graph_cache
from bpfcov.prune.graph_reader import reference_graph
from bpfcov.report.formats.html import DATA_FILE, ROWS_SHOWN

sys.path.insert(0, str(ROOT))
from bench.big_program import CALLED_EVERY, build, function_name  # noqa: E402

FUNCTIONS = 50_000
INDEX_BUDGET = 2 << 20
HTML_BUDGET = 20 << 20


@pytest.fixture(scope="module")
def big_report(tmp_path_factory):
    require_bpf()
    folder = tmp_path_factory.mktemp("big")
    program = build(FUNCTIONS, folder)
    out = folder / "out"
    # Its own cache: module fixtures run before the per-test private_cache.
    env = dict(os.environ, XDG_CACHE_HOME=str(folder / "cache"))
    bpfcov("run", "-q", "--lines", "-o", out, "--source-root", folder, "--", program, timeout=900, env=env)
    return folder, out


def _functions_js(html) -> dict:
    text = (html / DATA_FILE).read_text()
    assert text.startswith("bpfcovFunctions(") and text.endswith(");\n")
    return json.loads(text[len("bpfcovFunctions("):-3])


def test_a_big_programs_report_keeps_its_size_budget_and_every_function(big_report):
    folder, out = big_report
    html = out / "html"
    index = (html / "index.html").stat().st_size
    total = sum(p.stat().st_size for p in html.iterdir())
    assert index <= INDEX_BUDGET, f"index.html is {index:,} bytes"
    assert total <= HTML_BUDGET, f"html/ is {total:,} bytes"
    # The oracle: the generator's own list of what main calls, and the linker's symbols.
    symbols = subprocess.run(["readelf", "-sW", folder / "big"], capture_output=True, text=True, check=True).stdout
    generated = {f.split()[-1] for f in symbols.splitlines() if " FUNC " in f and "unit" in f}
    assert len(generated) == FUNCTIONS
    called = {function_name(i) for i in range(0, FUNCTIONS, CALLED_EVERY)}
    data = _functions_js(html)
    column = data["columns"].index("display")
    unhit = {row[column] for row in data["unhit"]}
    hit = {row[column] for row in data["hit"]}
    assert hit & generated == called
    assert unhit == generated - called
    # The index itself lists only the first rows of each table.
    page = (html / "index.html").read_text()
    assert page.count('<tr id="f0-') <= 2 * ROWS_SHOWN + 500  # + the pruning plan's cuts


def test_chromium_finds_a_function_the_index_does_not_list(big_report, tmp_path):
    _, out = big_report
    html = out / "html"
    data = _functions_js(html)
    anchor, display = data["columns"].index("anchor"), data["columns"].index("display")
    last = data["unhit"][-1]  # the smallest never-executed function: far below the rows listed
    page = (html / "index.html").read_text()
    assert f'id="{last[anchor]}"' not in page
    result = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
         "--virtual-time-budget=10000", "--dump-dom", (html / "index.html").as_uri() + "#" + last[anchor]],
        capture_output=True, text=True, timeout=180)
    dom = result.stdout
    # Following the link loaded functions.js, filtered the table by the function's name and drew its row.
    assert f'<tr id="{last[anchor]}"><td class="name"' in dom
    assert last[display] in dom and "1 of " in dom
    errors = [row for row in result.stderr.splitlines() if "CONSOLE" in row]
    assert not errors, errors


def test_a_big_file_page_marks_runs_of_lines_not_each_line(big_report):
    folder, out = big_report
    html = out / "html"
    source = (folder / "src" / "unit00000.c").read_text()
    page = next(p for p in html.glob("file*.html") if "unit00000.c" in p.read_text()[:2000]).read_text()
    start = page.index('<div class="src">')
    markup = page[start:page.index("</div>", start)]
    # Line numbers, a run element per stretch of one status, a badge per function: well
    # under 2.5 times the source, where a table row per line made it seven times.
    assert len(markup) < 2.5 * len(source), f"{len(markup):,} bytes of markup for {len(source):,} of source"
    functions = source.count("\nint ")
    runs = markup.count('<span class="h">') + markup.count('<span class="u">')
    ran = markup.count('<b class="hit"')
    assert functions == 100 and ran == 100 // CALLED_EVERY and markup.count('<b class="unhit"') == 90
    # One run per function, and in one that ran, two more around a branch it did not take.
    assert runs <= functions + 2 * ran


def test_the_data_file_holds_line_tables_as_arrays_and_reads_older_files(big_report, tmp_path):
    _, out = big_report
    run = store.read(str(out / "bpfcov.db"))
    # The same run in the layout of schema 3, a row per line, as older bpfcov wrote it.
    old = tmp_path / "schema3.db"
    store.write(str(old), run)
    db = sqlite3.connect(old)
    db.execute("CREATE TABLE lines (object_id INTEGER NOT NULL, address INTEGER NOT NULL, offset INTEGER NOT NULL, "
               "file INTEGER NOT NULL, line INTEGER NOT NULL, function INTEGER NOT NULL, count INTEGER NOT NULL)")
    for oi, obj in enumerate(run.objects):
        t = obj.index.lines
        db.executemany("INSERT INTO lines VALUES (?,?,?,?,?,?,?)",
                       zip([oi] * len(t), t.address.tolist(), t.offset.tolist(), t.file.tolist(), t.line.tolist(),
                           t.function.tolist(), obj.line_counts.tolist()))
    db.execute("DROP TABLE line_arrays")
    db.execute("UPDATE meta SET value = '3' WHERE key = 'schema'")
    db.commit()
    db.execute("VACUUM")
    db.close()
    back = store.read(str(old))
    for a, b in zip(run.objects, back.objects):
        for column in ("address", "offset", "file", "line", "function"):
            assert np.array_equal(getattr(a.index.lines, column), getattr(b.index.lines, column))
        assert np.array_equal(a.line_counts, b.line_counts)
    assert (out / "bpfcov.db").stat().st_size < old.stat().st_size / 1.5


def test_a_damaged_line_table_is_refused_in_one_line(big_report, tmp_path):
    _, out = big_report
    damaged = tmp_path / "damaged.db"
    damaged.write_bytes((out / "bpfcov.db").read_bytes())
    db = sqlite3.connect(damaged)
    db.execute("UPDATE line_arrays SET count = x'0102030405'")
    db.commit()
    db.close()
    result = bpfcov("report", damaged, "-o", tmp_path / "r", check=False)
    assert result.returncode != 0 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("bpfcov: error: ") and "corrupt bpfcov data file" in result.stderr


def test_a_cached_reference_graph_is_the_graph_and_a_damaged_entry_is_rebuilt(tmp_path):
    """On the sqlite workload (real compiler output, switch tables, PLT, relocations)."""
    path = target("sqlite", "workload")
    index = index_object(path)
    fresh = reference_graph(path, index)
    key = graph_cache.key_for(index)
    graph_cache.store(key, fresh)
    cached = graph_cache.load(key, path)
    assert cached is not None
    assert cached.nodes == fresh.nodes and cached.refs == fresh.refs
    assert cached.roots == fresh.roots and cached.node_of_function == fresh.node_of_function
    entry = graph_cache._entry_path(key)
    with open(entry, "r+b") as f:
        f.seek(200)
        f.write(b"\xff" * 64)
    assert graph_cache.load(key, path) is None
    assert not os.path.exists(entry)  # deleted, to be rebuilt


def test_a_warm_report_matches_the_cold_one_without_loading_the_code_readers(big_report, tmp_path):
    """The run's report read the binary's code (cold); a report after it takes the graph
    from the cache, must give every function the same plan, and must not import capstone
    or pyelftools: their imports were a tenth of a warm report's time."""
    folder, out = big_report
    env = dict(os.environ, XDG_CACHE_HOME=str(folder / "cache"))
    script = ("import sys; from bpfcov.cli import main; code = main(sys.argv[1:]); "
              "print(sorted(m for m in ('capstone', 'elftools') if m in sys.modules)); sys.exit(code)")
    result = subprocess.run([sys.executable, "-c", script, "report", str(out / "bpfcov.db"), "-o", str(tmp_path),
                             "--source-root", str(folder)], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "[]"
    warm = json.loads((tmp_path / "coverage.json").read_text())
    assert warm == json.loads((out / "coverage.json").read_text())
    assert sum(f["prune"] is not None for f in warm["objects"][0]["functions"]) > FUNCTIONS // 2


def test_coverage_json_written_record_by_record_is_as_dict(big_report):
    from bpfcov.report.formats.json import as_dict
    from bpfcov.report.pipeline import build_report
    _, out = big_report
    written = json.loads((out / "coverage.json").read_text())
    assert written == as_dict(build_report(store.read(str(out / "bpfcov.db"))))
    assert len(written["objects"][0]["lines"]) >= 300_000


def test_source_columns_stay_aligned_in_chromium(bpf, tmp_path):
    """Line numbers, counts and code are three <pre> columns: in the DOM Chromium builds,
    each must hold one line per source line (the parser drops a newline after <pre>)."""
    import html as markup
    import re
    out = tmp_path / "out"
    bpfcov("run", "-q", "--lines", "--mode", "count", "-o", out, "--source-root", ROOT, "--format", "html", "--",
           target("O0", "shapes"), "fact", "3")
    page = next(p for p in (out / "html").glob("file*.html") if "shapes.c" in p.read_text()[:3000])
    source = (ROOT / "sample_targets/shapes/shapes.c").read_text().splitlines()
    dom = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                          f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    columns = {}
    for name in ("ln", "cnt", "code"):
        inner = re.search(rf'<pre class="{name}">(.*?)</pre>', dom, re.S).group(1)
        columns[name] = markup.unescape(re.sub(r"<[^>]+>", "", inner)).split("\n")
    assert columns["ln"] == [str(n) for n in range(1, len(source) + 1)]
    assert columns["code"][:len(source)] == source and columns["code"][len(source):] in ([], [""])
    assert len(columns["cnt"]) == len(source)
    assert any(c.replace(",", "").isdigit() for c in columns["cnt"])
