"""The HTML dead-code report: OUT/html/index.html plus a page per source file.

Shaping (`pages`) builds plain data from the Report; the jinja2 templates in templates/
only lay it out. Autoescape is on everywhere: names and paths come from the binary and
are untrusted. Source text is read only through SourceReader (under --source-root).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field
from importlib import resources

from bpfcov.report.model import FunctionRow, Report, SourceFile
from bpfcov.report.reporter import Reporter, WriteContext
from bpfcov.report.sources import SourceReader
from bpfcov.report.treemap import layout

TREEMAP_WIDTH = 1200
TREEMAP_HEIGHT = 520
# Cuts listed in the pruning plan: the largest; coverage.json classes every function.
MAX_CUTS_SHOWN = 500


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


@dataclass
class ClassTotal:
    klass: str
    functions: int
    bytes: int


@dataclass
class SourceLine:
    number: int
    text: str
    status: str           # "hit" | "unhit" | "" (not measured)
    count: int | None
    functions: list[FunctionRow] = field(default_factory=list)


@dataclass
class FilePage:
    filename: str         # page file name under html/
    source: SourceFile
    lines: list[SourceLine] | None   # None when the source may not or cannot be read
    why_no_source: str


def _page_name(i: int) -> str:
    return f"file{i:04d}.html"


def pages(report: Report, sources: SourceReader):
    """(index context, [FilePage]) for `report`."""
    page_of: dict[str, str] = {}
    file_pages: list[FilePage] = []
    for i, source in enumerate(report.files):
        page = _page_name(i)
        page_of[source.path] = page
        text = sources.lines(source.original_path)
        if text is None and source.path != source.original_path:
            text = sources.lines(source.path)  # a --path-map may point at a local checkout
        if text is None:
            text = sources.fetched_lines(source.original_path, source.build_ids)
        why = "" if text is not None else sources.why_unreadable(source.original_path)
        lines = None
        if text is not None:
            starts: dict[int, list[FunctionRow]] = {}
            for f in source.functions:
                starts.setdefault(f.line or 0, []).append(f)
            lines = []
            for n, t in enumerate(text, start=1):
                count = source.lines.get(n)
                status = "" if count is None else ("hit" if count > 0 else "unhit")
                lines.append(SourceLine(n, t, status, count, starts.get(n, [])))
        file_pages.append(FilePage(page, source, lines, why))

    unhit = sorted((f for o in report.objects for f in o.functions if f.status == "unhit"),
                   key=lambda f: (-f.size, f.display_name))
    unmeasured = [f for o in report.objects for f in o.functions if f.status == "unmeasured"]
    hit = sorted((f for o in report.objects for f in o.functions if f.status == "hit"),
                 key=lambda f: (-f.count, f.display_name))
    files = [FileSummary(s.path, page_of[s.path], len(s.functions), s.functions_hit, s.dead_bytes,
                         len(s.lines), sum(1 for c in s.lines.values() if c > 0)) for s in report.files]
    # A no-code function has nothing to run: it is neither executed nor not.
    objects = [ObjectSummary(o.path, o.build_id, sum(f.status != "no-code" for f in o.functions),
                             sum(f.status == "hit" for f in o.functions),
                             sum(f.status == "unmeasured" for f in o.functions), o.dead_bytes, o.total_bytes,
                             o.warnings) for o in report.objects]

    cuts, class_totals = pruning_plan(report)
    groups = []
    for o in report.objects:
        by_file: dict[str, list[FunctionRow]] = {}
        for f in o.functions:
            if f.own_bytes:  # the treemap's area is machine code, each byte once
                by_file.setdefault(f.file or "(no source)", []).append(f)
        groups.append((os.path.basename(o.path), sorted(by_file.items())))
    tiles = layout(groups, TREEMAP_WIDTH, TREEMAP_HEIGHT)
    started = datetime.datetime.fromtimestamp(report.started).astimezone() if report.started else None
    index = {
        "report": report, "totals": report.totals, "unhit": unhit, "unmeasured": unmeasured, "hit": hit,
        "files": files, "objects": objects, "tiles": tiles, "page_of": page_of,
        "cuts": cuts[:MAX_CUTS_SHOWN], "cuts_not_shown": max(0, len(cuts) - MAX_CUTS_SHOWN),
        "class_totals": class_totals, "planned": any(o.plan is not None for o in report.objects),
        "treemap_width": TREEMAP_WIDTH, "treemap_height": TREEMAP_HEIGHT,
        "started": started.strftime("%Y-%m-%d %H:%M:%S %Z") if started else "",
        "duration": f"{report.duration:.2f} s" if report.duration is not None else "",
    }
    return index, file_pages


def pruning_plan(report: Report) -> tuple[list[CutView], list[ClassTotal]]:
    """The cuts of every object whose plan is known, largest first, and the never-executed
    functions' bytes per class."""
    cuts: list[CutView] = []
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
            if root is None:
                continue
            cluster = [row_of[m] for m in cut.cluster[1:] if m in row_of]
            cuts.append(CutView(root, cut.klass, cut.retained_bytes, cluster, cut.referenced_by,
                                cut.referrers - len(cut.referenced_by), cut.root))
    cuts.sort(key=lambda c: (-c.retained_bytes, c.root.display_name))
    return cuts, list(totals.values())


def environment():
    import jinja2  # here: the command line lists the formats without loading jinja2
    folder = resources.files("bpfcov.templates")
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(folder)), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["thousands"] = lambda n: f"{n:,}"
    env.filters["percent"] = lambda x: f"{x:.1f}%"
    return env


def write(report: Report, out_dir: str, sources: SourceReader) -> str:
    """Write the report's pages into `out_dir`; return the index path."""
    env = environment()
    index, file_pages = pages(report, sources)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "index.html"), "w", encoding="utf-8") as f:
        f.write(env.get_template("index.html").render(**index))
    template = env.get_template("file.html")
    for page in file_pages:
        with open(os.path.join(out_dir, page.filename), "w", encoding="utf-8") as f:
            f.write(template.render(page=page, report=report))
    return os.path.join(out_dir, "index.html")


class HtmlReporter(Reporter):
    name = "html"
    file_name = "html"
    help = "never-executed functions ranked by size, a treemap, and source pages"
    folder = True
    default = True

    def write(self, report: Report, out, context: WriteContext) -> None:
        write(report, out, context.sources)
