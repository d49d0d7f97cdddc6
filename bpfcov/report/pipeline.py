"""One place that decides what is reported: which functions, under which paths, in which
order, with which counts. Every output format starts from `build_report`.

Rules applied here, for every format alike:
- Paths are rewritten by --path-map OLD=NEW (first matching prefix) and then made relative
  to --relative-to.
- Whether a function ran is data/model.py's one rule; and a function is hit exactly when a
  measured line inside it is hit (lcov 2.x checks this): without --lines a function's
  measured line is its first line; with --lines, its first line is counted as hit whenever
  the function was.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from bpfcov.data.model import RunCoverage
from bpfcov.gcpause import gc_paused
from bpfcov.probes.model import name_filter
from bpfcov.prune.model import UNREACHABLE, PrunePlan
from bpfcov.report.model import FunctionRow, ObjectReport, Report, SourceFile, Totals, Watched


@dataclass
class ReportOptions:
    path_maps: list[tuple[str, str]] = field(default_factory=list)
    relative_to: str | None = None
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    prune: bool = True     # plan the pruning of each object whose file is here (prune/)


def rewrite_path(path: str | None, options: ReportOptions) -> str | None:
    if path is None:
        return None
    for old, new in options.path_maps:
        if path == old or path.startswith(old.rstrip("/") + "/"):
            path = new.rstrip("/") + path[len(old.rstrip("/")):] if new else path[len(old):].lstrip("/")
            break
    if options.relative_to and os.path.isabs(path):
        base = os.path.abspath(options.relative_to)
        if path == base or path.startswith(base.rstrip("/") + "/"):
            path = os.path.relpath(path, base)
    return path


def _anchor(object_index: int, function_index: int) -> str:
    return f"f{object_index}-{function_index}"


def _plan(index, statuses: Sequence[str]) -> tuple[PrunePlan | None, str | None]:
    """The object's pruning plan, or why there is none."""
    # Imported here: the graph needs numpy and capstone, which the command line must not
    # load before it has checked for root (tests/test_cli.py).
    from bpfcov.prune.graph import GraphUnavailable, graph_of
    from bpfcov.prune.plan import prune_plan

    try:
        graph = graph_of(index)
    except GraphUnavailable as e:
        return None, f"no pruning plan: {e}"
    return prune_plan(graph, statuses, [f.display_name for f in index.functions]), None


def _line_counts(table, counts, options: ReportOptions) -> dict[str | None, dict[int, int]]:
    """File as reported -> line -> count, for an object's line table: a line with several
    addresses ran as often as its busiest address. In numpy: a big object has millions."""
    if not len(table):
        return {}
    paths = [rewrite_path(p, options) for p in table.files]
    # Files that --path-map makes one are one file.
    unique_paths = sorted(set(paths), key=lambda p: (p is None, p or ""))
    position = {p: i for i, p in enumerate(unique_paths)}
    path_id = np.array([position[p] for p in paths], dtype=np.int64)
    keys = path_id[table.file.astype(np.int64)] << 32 | table.line.astype(np.int64)
    distinct, where = np.unique(keys, return_inverse=True)
    busiest = np.zeros(len(distinct), dtype=np.int64)
    np.maximum.at(busiest, where, counts.astype(np.int64))
    # `distinct` is sorted, so each file's lines are one stretch of it.
    file_ids = distinct >> 32
    starts = np.flatnonzero(np.diff(file_ids, prepend=-1)).tolist()
    line_numbers, line_counts = (distinct & 0xFFFFFFFF).tolist(), busiest.tolist()
    return {unique_paths[file_ids[a]]: dict(zip(line_numbers[a:b], line_counts[a:b]))
            for a, b in zip(starts, starts[1:] + [len(distinct)])}


@gc_paused()
def build_report(run: RunCoverage, options: ReportOptions | None = None, *, plans_later: bool = False) -> Report:
    """The report of `run`. With `plans_later`, its pruning plans (a third of the time at
    scale) are left for `add_plans`, so that what does not show them can be written
    meanwhile (report/writers.py)."""
    options = options or ReportOptions()
    wanted_names = name_filter(options.include, options.exclude)
    filtered = bool(options.include or options.exclude)

    path_of: dict[str | None, str | None] = {}  # a file's path as reported: few files, many functions

    def reported_path(path: str | None) -> str | None:
        if path not in path_of:
            path_of[path] = rewrite_path(path, options)
        return path_of[path]

    objects: list[ObjectReport] = []
    files: dict[str, SourceFile] = {}
    totals = Totals()
    pending_plans = []
    for oi, obj in enumerate(run.objects):
        index = obj.index
        rows: list[FunctionRow] = []
        line_rows: dict[str | None, dict[int, int]] = {}
        if run.lines and index.lines is not None and obj.line_counts is not None:
            line_rows = _line_counts(index.lines, obj.line_counts, options)
        executed, inlined, first_hits = (a.tolist() for a in (obj.executed_counts(), obj.inlined(),
                                                              obj.first_hit_ns()))  # data/model.py
        statuses = obj.function_statuses()
        fleet = obj.fleet
        for fi, f in enumerate(index.functions):
            count = executed[fi]
            status = statuses[fi]
            row = FunctionRow(
                object_path=index.path, name=f.name, display_name=f.display_name, address=f.address,
                size=f.size, file=reported_path(f.file), line=f.line, end_line=f.end_line,
                count=count, status=status, aliases=f.aliases, probe=f.probe.value, probe_note=f.probe_note,
                anchor=_anchor(oi, fi), index=fi, inlined_instances=f.inlined_instances, inlined_count=inlined[fi],
                first_hit_ns=first_hits[fi])
            if fleet is not None:
                row.hosts = int(fleet.hosts[fi])
                row.first_executed = float(fleet.first_executed[fi]) or None
                row.last_executed = float(fleet.last_executed[fi]) or None
            if filtered and not wanted_names(row.name, row.display_name):
                continue
            rows.append(row)
            totals.functions += 1
            if status == "hit":
                totals.functions_hit += 1
            elif status == "unmeasured":
                totals.functions_unmeasured += 1
            elif status == "no-code":
                totals.functions_no_code += 1
            else:
                totals.dead_bytes += row.own_bytes
            if row.file is not None and row.line is not None and status not in ("unmeasured", "no-code"):
                source = files.get(row.file)
                if source is None:
                    source = files[row.file] = SourceFile(row.file, f.file or row.file)
                source.functions.append(row)
                if index.build_id and index.build_id not in source.build_ids:
                    source.build_ids.append(index.build_id)
                if not run.lines:
                    source.lines[row.line] = source.lines.get(row.line, 0) + count
                else:
                    lines = line_rows.setdefault(row.file, {})
                    lines[row.line] = max(lines.get(row.line, 0), count if status == "hit" else 0)
        if run.lines:
            for path, lines in line_rows.items():
                known = files.get(path) if path is not None else None
                if known is None:
                    continue  # lines of functions filtered out or unmeasured
                if not known.lines:
                    known.lines.update(lines)
                else:  # the file is in another object too
                    for line, count in lines.items():
                        known.lines[line] = max(known.lines.get(line, 0), count)
        line_counts = {path: lines for path, lines in line_rows.items() if path is not None}
        objects.append(ObjectReport(index.path, index.build_id, rows, line_counts, list(index.warnings),
                                    watched=None if fleet is None else
                                    Watched(fleet.hosts_watching, fleet.watched_seconds)))
        if options.prune:
            pending_plans.append((objects[-1], index, statuses))
    ordered = [files[p] for p in sorted(files)]
    for source in ordered:
        source.functions.sort(key=lambda r: (r.line or 0, r.name))
        totals.lines += len(source.lines)
        totals.lines_hit += sum(1 for c in source.lines.values() if c > 0)
    report = Report(mode=run.mode, command=run.command, started=run.started, duration=run.duration,
                    host=run.host, kernel=run.kernel, lines=run.lines, complete=run.complete,
                    objects=objects, files=ordered, totals=totals, bpfcov_version=run.bpfcov_version,
                    attach_method=run.stats.get("attach_method"), pending_plans=pending_plans)
    if not plans_later:
        add_plans(report)
    return report


@gc_paused()
def add_plans(report: Report) -> None:
    """Make the pruning plans that build_report(plans_later=True) left out: each object's
    plan, each never-executed row's class, and the unreachable bytes. Once; then nothing."""
    for o, index, statuses in report.pending_plans:
        o.plan, why_no_plan = _plan(index, statuses)
        if why_no_plan:
            o.warnings.append(why_no_plan)
        if o.plan is None:
            continue
        prune = o.plan.prune
        for row in o.functions:
            row.prune = prune.get(row.index)
            if row.status == "unhit" and row.prune is not None and row.prune.klass == UNREACHABLE:
                report.totals.unreachable_bytes += row.own_bytes
    report.pending_plans = []
