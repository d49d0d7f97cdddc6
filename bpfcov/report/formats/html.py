"""The HTML dead-code report: OUT/html/index.html, a page per source file, and
functions.js, every function's row in compact form.

Its size must not grow with the function count, since a big server has a million
functions: the index shows the first ROWS_SHOWN rows of each function table and loads
functions.js (a script, which file:// allows where fetch() is refused) only when someone
filters, sorts or follows a link to a row not shown. The treemap stops at files when
functions are too many to draw; each file's page lists its functions. Source pages mark
lines with one short element each, so a long file's page stays near its source's size.

Shaping (`index_page`, `file_pages`) builds plain data from the Report; the jinja2
templates in templates/ lay out the pages, and `source_markup` and `function_table_markup`
a file page's source lines and functions (too many for a template loop at scale). Every
name, path and source line comes from the binary and is untrusted: autoescape is on in the
templates, and both builders of markup escape each piece themselves. Source text is read
only through SourceReader (under --source-root).

The index shows the pruning plan and the source pages do not: they are two parts, written
side by side (report/writers.py).
"""

from __future__ import annotations

import datetime
import functools
import html
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING

from bpfcov.report.model import FunctionRow, Report, SourceFile, Watched
from bpfcov.report.reporter import Part, Reporter, WriteContext
from bpfcov.report.sources import SourceReader
from bpfcov.report.treemap import Leaf, layout

if TYPE_CHECKING:  # loaded with jinja2, when a report is written: the command line starts without it
    from markupsafe import Markup

TREEMAP_WIDTH = 1200
TREEMAP_HEIGHT = 520
# Cuts listed in the pruning plan: the largest; coverage.json classes every function.
MAX_CUTS_SHOWN = 500
# A cut's cluster names this many of its functions; the rest are counted.
MAX_CLUSTER_SHOWN = 20
# Rows of each function table written into the index; functions.js holds them all.
ROWS_SHOWN = 200
# Above this many functions with code, the treemap draws object -> folder -> file.
MAX_FUNCTION_TILES = 3000
DATA_FILE = "functions.js"
ASSETS = ("report.css", "report.js")


@dataclass
class FileSummary:
    path: str
    page: str | None      # relative link to its page
    functions: int
    functions_hit: int
    dead_bytes: int
    lines: int
    lines_hit: int


@dataclass
class ObjectSummary:
    path: str
    build_id: str | None
    functions: int
    functions_hit: int
    unmeasured: int
    dead_bytes: int
    total_bytes: int
    warnings: list[str]


@dataclass
class CutView:
    """One row of the pruning plan: a never-executed function to remove, and its cluster."""
    root: FunctionRow
    klass: str
    retained_bytes: int
    cluster: list[FunctionRow]      # the others that go with it, largest first
    referenced_by: list[str]
    more_referrers: int             # referrers not named
    root_reason: str | None         # why it is a static root itself (an export)
    more_cluster: int = 0           # cluster members not named


@dataclass
class ClassTotal:
    klass: str
    functions: int
    bytes: int


@dataclass
class FilePage:
    filename: str         # page file name under html/
    source: SourceFile
    lines: Markup | None  # the marked-up source; None when it may not or cannot be read
    why_no_source: str
    functions: Markup     # the rows of its table of functions


def _page_name(i: int) -> str:
    return f"file{i:04d}.html"


def _read_source(source: SourceFile, sources: SourceReader) -> list[str] | None:
    text = sources.lines(source.original_path)
    if text is None and source.path != source.original_path:
        text = sources.lines(source.path)  # a --path-map may point at a local checkout
    if text is None:
        text = sources.fetched_lines(source.original_path, source.build_ids)
    return text


_RUN_CLASS = {True: "h", False: "u"}  # measured lines that ran / never ran


def source_markup(text: list[str], source: SourceFile, counts_shown: bool) -> Markup:
    """The source as three aligned columns: line numbers, counts (with `counts_shown`),
    and the code, in which each run of lines of one status (ran, never ran, not measured)
    is one element, and a badge marks where each function begins. A line costs a few
    bytes beyond its text, not an element of its own.

    Work is per measured line and per function, not per line of text: a page's markup
    goes only where a run of one status begins or ends, or a function begins."""
    from markupsafe import Markup
    measured = source.lines
    n_lines = len(text)
    # Escaped in one piece, which costs a tenth of escaping line by line: no line holds a "\n".
    code = html.escape("\n".join(text), quote=False).split("\n") if text else []

    # A run of one status begins at a measured line whose status differs from the line
    # before it, and ends after a measured line followed by a different status or a gap.
    last, open_class = 0, ""  # the last measured line seen, and the class of its run
    for n in sorted(n for n in measured if 1 <= n <= n_lines):
        now = _RUN_CLASS[measured[n] > 0]
        if open_class and n != last + 1:  # unmeasured lines since: the run ended there
            code[last] = "</span>" + code[last]
            open_class = ""
        if now != open_class:
            code[n - 1] = ("</span>" if open_class else "") + f'<span class="{now}">' + code[n - 1]
            open_class = now
        last = n
    ending = ""
    if open_class:
        if last == n_lines:
            ending = "</span>"
        else:
            code[last] = "</span>" + code[last]
    for f in source.functions:
        line = f.line or 0
        if 1 <= line <= n_lines:
            code[line - 1] += f'<b class="{f.status}" id="{f.anchor}"></b>'
    # Each <pre> opens with a newline: the HTML parser drops one there, which would
    # otherwise take a first empty line (or empty count) and shift its column up a line.
    numbers = "\n".join(map(str, range(1, n_lines + 1)))
    gutter = f'<pre class="ln">\n{numbers}</pre>'
    if counts_shown:
        counts = [""] * n_lines
        for n, count in measured.items():
            if 1 <= n <= n_lines:
                counts[n - 1] = f"{count:,}"
        gutter += '<pre class="cnt">\n' + "\n".join(counts) + "</pre>"
    body = ("\n".join(code) + "\n" if code else "") + ending
    return Markup(f'<div class="src">{gutter}<pre class="code">\n{body}</pre></div>')


def function_table_markup(source: SourceFile, linked: bool) -> Markup:
    """A file page's table of its functions, one row each: name, status, count, bytes and
    the line, `linked` to the badge in the source when the source is shown. Built here
    rather than in the template, whose per-row work is most of a report's time at scale.
    Closing tags of rows and cells are left out (HTML allows it)."""
    from markupsafe import Markup
    escape = html.escape
    rows = []
    for f in source.functions:
        title = f' title="{escape(f.name)}"' if f.name != f.display_name else ""
        line = f'<a href="#{f.anchor}">{f.line}</a>' if linked else f"{f.line}"
        rows.append(f'<tr><td{title}>{escape(f.display_name)}<td><span class="status {f.status}">{f.status}</span>'
                    f'<td>{f.count:,}<td>{f.size:,}<td>{line}')
    return Markup("".join(rows))


def _unhit_note(f: FunctionRow) -> str:
    if not f.inlined_instances:
        return ""
    places = f"{f.inlined_instances:,} place{'s' if f.inlined_instances != 1 else ''}"
    return f"(inlined in {places}, none ran" + ("; no out-of-line copy)" if f.probe == "inlined" else ")")


def _hit_note(f: FunctionRow) -> str:
    notes = []
    if f.probe == "moved":
        notes.append("(probe moved)")
    if f.inlined_count:
        places = f"{f.inlined_instances:,} place{'s' if f.inlined_instances != 1 else ''}"
        notes.append(f"(ran inlined in {places})")
    return " ".join(notes)


@dataclass
class TableRow:
    """One function's row in the index's function tables, as the template and
    functions.js both give it."""
    f: FunctionRow
    note: str
    href: str      # its source line on its file's page, or ""


def _row(f: FunctionRow, note: str, page_of: dict[str, str]) -> TableRow:
    page = page_of.get(f.file or "")
    return TableRow(f, note, f"{page}#{f.anchor}" if page else "")


def data_script(report: Report, unhit: list[TableRow], hit: list[TableRow], page_of: dict[str, str]) -> str:
    """functions.js: every row of the index's function tables, compact (one array per row;
    objects, files and pruning classes as numbers into lists), so the page can filter,
    sort and find any of them. JSON inside a script: its strings are escaped so that no
    name can end the script or be read as markup."""
    objects = [o.path for o in report.objects]
    object_of = {p: i for i, p in enumerate(objects)}
    files = [s.path for s in report.files]
    file_of = {p: i for i, p in enumerate(files)}
    classes = ["", "unreachable", "dead-only", "cold"]

    def row(r: TableRow, hit_table: bool) -> list:
        f = r.f
        klass, retained = (classes.index(f.prune.klass), f.prune.retained_bytes) if f.prune is not None else (0, 0)
        file = file_of.get(f.file or "", -1)
        return [f.anchor, f.display_name, f.name if f.name != f.display_name else "", f.size,
                f.count if hit_table else 0, r.note, file, f.line or 0, object_of[f.object_path], klass, retained]

    data = {"objects": objects, "watched": [watched_text(o.watched) for o in report.objects],
            "files": files, "pages": [page_of[p] for p in files], "classes": classes,
            "columns": ["anchor", "display", "mangled", "size", "count", "note", "file", "line", "object", "class",
                        "retained"],
            "unhit": [row(r, False) for r in unhit], "hit": [row(r, True) for r in hit]}
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=True)
    # ensure_ascii leaves < > & as they are; as \\u escapes they mean the same to JSON and
    # nothing to the HTML parser.
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return f"bpfcovFunctions({text});\n"


def watched_text(watched: Watched | None) -> str:
    """How much of a fleet watched an object, e.g. "3 hosts, 12.5 days"; "" outside a fleet."""
    if watched is None:
        return ""
    hours = watched.seconds / 3600
    span = f"{hours / 24:.1f} days" if hours >= 48 else f"{hours:.1f} hours" if hours >= 1 else \
        f"{watched.seconds / 60:.0f} minutes"
    return f"{watched.hosts:,} host{'s' if watched.hosts != 1 else ''}, {span}"


def _coverage_band(hit_bytes: int, size: int) -> str:
    """A file tile's colour class: q0 (nothing ran) .. q4 (all its code ran)."""
    share = hit_bytes / size if size else 0.0
    return f"q{min(4, int(share * 4 + 0.5))}"


def treemap_groups(report: Report, page_of: dict[str, str]) -> list[tuple[str, list[tuple[str, list[Leaf]]]]]:
    """object -> file -> function while functions are few enough to draw; beyond that,
    object -> folder -> file, each file tile leading to its page."""
    with_code = sum(1 for o in report.objects for f in o.functions if f.own_bytes)
    groups = []
    for o in report.objects:
        by_file: dict[str, list[FunctionRow]] = {}
        for f in o.functions:
            if f.own_bytes:  # the treemap's area is machine code, each byte once
                by_file.setdefault(f.file or "(no source)", []).append(f)
        if with_code <= MAX_FUNCTION_TILES:
            members = [(path, [_function_leaf(f) for f in functions]) for path, functions in sorted(by_file.items())]
        else:
            by_folder: dict[str, list[Leaf]] = {}
            for path, functions in sorted(by_file.items()):
                size = sum(f.own_bytes for f in functions)
                ran = sum(f.own_bytes for f in functions if f.status == "hit")
                title = f"{path}: {size:,} bytes, {100.0 * ran / size:.0f}% of them executed"
                page = page_of.get(path)
                by_folder.setdefault(os.path.dirname(path) or ".", []).append(
                    Leaf(size, os.path.basename(path), title, _coverage_band(ran, size), page or ""))
            members = sorted(by_folder.items())
        groups.append((os.path.basename(o.path), members))
    return groups


def _function_leaf(f: FunctionRow) -> Leaf:
    klass = f.prune.klass if f.prune is not None and f.status == "unhit" else ""
    title = f"{f.display_name}: {f.size:,} bytes, {f.status}" + (f", {klass}" if klass else "")
    return Leaf(f.size, f.display_name, title, f.status, f"#{f.anchor}", klass)


def _pages_of(report: Report) -> dict[str, str]:
    """Each source file's page name, by its path as reported."""
    return {source.path: _page_name(i) for i, source in enumerate(report.files)}


def file_pages(report: Report, sources: SourceReader) -> Iterator[FilePage]:
    """The page of each source file of `report`, one at a time."""
    page_of = _pages_of(report)
    counts_shown = report.mode != "hit"
    for source in report.files:
        text = _read_source(source, sources)
        why = "" if text is not None else sources.why_unreadable(source.original_path)
        lines = source_markup(text, source, counts_shown) if text is not None else None
        yield FilePage(page_of[source.path], source, lines, why, function_table_markup(source, lines is not None))


def index_page(report: Report):
    """(index context, functions.js text) for `report`."""
    page_of = _pages_of(report)
    every = [f for o in report.objects for f in o.functions]
    unhit = [_row(f, _unhit_note(f), page_of)
             for f in sorted((f for f in every if f.status == "unhit"), key=lambda f: (-f.size, f.display_name))]
    hit = [_row(f, _hit_note(f), page_of)
           for f in sorted((f for f in every if f.status == "hit"), key=lambda f: (-f.count, f.display_name))]
    unmeasured = [f for f in every if f.status == "unmeasured"]
    files = [FileSummary(s.path, page_of[s.path], len(s.functions), s.functions_hit, s.dead_bytes,
                         len(s.lines), sum(1 for c in s.lines.values() if c > 0)) for s in report.files]
    # A no-code function has nothing to run: it is neither executed nor not.
    objects = [ObjectSummary(o.path, o.build_id, sum(f.status != "no-code" for f in o.functions),
                             sum(f.status == "hit" for f in o.functions),
                             sum(f.status == "unmeasured" for f in o.functions), o.dead_bytes, o.total_bytes,
                             o.warnings) for o in report.objects]

    cuts, cuts_not_shown, class_totals = pruning_plan(report)
    tiles = layout(treemap_groups(report, page_of), TREEMAP_WIDTH, TREEMAP_HEIGHT)
    started = datetime.datetime.fromtimestamp(report.started).astimezone() if report.started else None
    index = {
        "report": report, "totals": report.totals, "unmeasured": unmeasured,
        "unhit": unhit[:ROWS_SHOWN], "unhit_total": len(unhit), "hit": hit[:ROWS_SHOWN], "hit_total": len(hit),
        "data_file": DATA_FILE, "files": files, "objects": objects, "tiles": tiles,
        "files_level": any(t.level == 2 and t.status.startswith("q") for t in tiles),
        "cuts": cuts, "cuts_not_shown": cuts_not_shown,
        "class_totals": class_totals, "planned": any(o.plan is not None for o in report.objects),
        "watched": {o.path: watched_text(o.watched) for o in report.objects},
        "fleet": any(o.watched is not None for o in report.objects),
        "treemap_width": TREEMAP_WIDTH, "treemap_height": TREEMAP_HEIGHT,
        "started": started.strftime("%Y-%m-%d %H:%M:%S %Z") if started else "",
        "duration": f"{report.duration:.2f} s" if report.duration is not None else "",
    }
    return index, data_script(report, unhit, hit, page_of)


def pruning_plan(report: Report) -> tuple[list[CutView], int, list[ClassTotal]]:
    """The MAX_CUTS_SHOWN largest cuts of every object whose plan is known, largest first;
    how many more there are; and the never-executed functions' bytes per class."""
    candidates = []  # (sort key, object's rows by index, cut): a view only for those shown
    totals = {klass: ClassTotal(klass, 0, 0) for klass in ("unreachable", "dead-only", "cold")}
    for o in report.objects:
        if o.plan is None:
            continue
        # Rows are the functions the report shows (--include/--exclude); the plan is the whole object's.
        row_of = {f.index: f for f in o.functions}
        for f in o.functions:
            if f.prune is not None and f.status == "unhit":
                totals[f.prune.klass].functions += 1
                totals[f.prune.klass].bytes += f.own_bytes
        for cut in o.plan.cuts:
            root = row_of.get(cut.function)
            if root is not None:
                candidates.append(((-cut.retained_bytes, root.display_name), row_of, cut))
    candidates.sort(key=lambda c: c[0])
    return ([_cut_view(cut, row_of) for _, row_of, cut in candidates[:MAX_CUTS_SHOWN]],
            max(0, len(candidates) - MAX_CUTS_SHOWN), list(totals.values()))


def _cut_view(cut, row_of: dict[int, FunctionRow]) -> CutView:
    cluster = [row_of[m] for m in cut.cluster[1:] if m in row_of]
    return CutView(row_of[cut.function], cut.klass, cut.retained_bytes, cluster[:MAX_CLUSTER_SHOWN],
                   cut.referenced_by, cut.referrers - len(cut.referenced_by), cut.root,
                   max(0, len(cluster) - MAX_CLUSTER_SHOWN))


@functools.cache
def environment():
    import jinja2  # here: the command line lists the formats without loading jinja2
    folder = resources.files("bpfcov.templates")
    # auto_reload off: the templates do not change while a report is written, and checking
    # them costs a stat per source page.
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(folder)), autoescape=True, auto_reload=False,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["thousands"] = lambda n: f"{n:,}"
    env.filters["percent"] = lambda x: f"{x:.1f}%"
    return env


def write_index(report: Report, out_dir: str) -> None:
    """index.html, functions.js and the shared assets: what shows the pruning plan."""
    index, data = index_page(report)
    with open(os.path.join(out_dir, "index.html"), "w", encoding="utf-8") as f:
        f.write(environment().get_template("index.html").render(**index))
    with open(os.path.join(out_dir, DATA_FILE), "w", encoding="utf-8") as f:
        f.write(data)
    for asset in ASSETS:  # shared by every page, rather than repeated in each
        with open(os.path.join(out_dir, asset), "w", encoding="utf-8") as f:
            f.write(resources.files("bpfcov.templates").joinpath(asset).read_text(encoding="utf-8"))


def write_source_pages(report: Report, out_dir: str, sources: SourceReader) -> None:
    """A page per source file: they need no pruning plan."""
    template = environment().get_template("file.html")
    for page in file_pages(report, sources):
        with open(os.path.join(out_dir, page.filename), "w", encoding="utf-8") as f:
            f.write(template.render(page=page, report=report))


class HtmlReporter(Reporter):
    name = "html"
    file_name = "html"
    help = "never-executed functions ranked by size, a treemap, and source pages"
    folder = True
    default = True

    def write(self, report: Report, out, context: WriteContext) -> None:
        for part in self.parts(report, out, context):
            part.work()

    def parts(self, report: Report, folder: str, context: WriteContext) -> list[Part]:
        # Compiled before the parts are forked, so that each child inherits them ready.
        for template in ("index.html", "file.html"):
            environment().get_template(template)
        # The source pages and the index take about as long, and only the index shows the plan.
        return [Part("writing the source pages", False, lambda: write_source_pages(report, folder, context.sources)),
                Part("writing the HTML index", True, lambda: write_index(report, folder))]
