"""coverage.json: the stable contract scripts read (format "bpfcov", version 1)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator

from bpfcov.report.model import Report
from bpfcov.report.reporter import Reporter, WriteContext

VERSION = 1


def as_dict(report: Report) -> dict:
    t = report.totals
    return {
        "format": "bpfcov",
        "version": VERSION,
        "mode": report.mode,
        "counts_are_lower_bounds": report.mode == "hit",
        "command": report.command,
        "started": report.started,
        "duration": report.duration,
        "host": report.host,
        "kernel": report.kernel,
        "attach_method": report.attach_method,
        "complete": report.complete,
        "objects": [
            {
                "path": o.path,
                "build_id": o.build_id,
                **({} if o.watched is None else {"watched": {"hosts": o.watched.hosts, "seconds": o.watched.seconds}}),
                "functions": [function_json(f) for f in o.functions],
                "lines": [{"file": p, "line": n, "count": c} for p, n, c in o.lines],
            }
            for o in report.objects
        ],
        "totals": totals_json(t),
    }


def function_json(f) -> dict:
    """One function's record (a FunctionRow), as coverage.json and the API give it: `count`
    is its out-of-line calls, `inlined_count` the runs of its `inlined_instances`; `prune`
    (never-executed functions of an object whose file was read, else null) its class and
    the bytes its removal frees (prune/plan.py)."""
    prune = {"class": f.prune.klass, "retained_bytes": f.prune.retained_bytes} if f.prune is not None else None
    record = {"name": f.name, "display_name": f.display_name, "address": f.address, "size": f.size,
              "file": f.file, "line": f.line, "count": f.calls, "status": f.status, "aliases": list(f.aliases),
              "inlined_instances": f.inlined_instances, "inlined_count": f.inlined_count, "prune": prune}
    if f.hosts is not None:  # a report from a fleet store: on how many hosts, and when, it ran
        record.update(hosts=f.hosts, first_executed=f.first_executed, last_executed=f.last_executed)
    return record


def totals_json(t) -> dict:
    return {"functions": t.functions, "functions_hit": t.functions_hit,
            "functions_unmeasured": t.functions_unmeasured, "functions_no_code": t.functions_no_code,
            "dead_bytes": t.dead_bytes, "unreachable_bytes": t.unreachable_bytes,
            "lines": t.lines, "lines_hit": t.lines_hit}


def write(report: Report, out) -> None:
    """as_dict(report), compact (`python -m json.tool` pretty-prints it for people), written
    piece by piece: a big object has a hundred thousand functions and millions of lines,
    and one string of them all (or a dict per line) took most of the time."""
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    # "objects" and "totals" are as_dict's last keys, "functions" and "lines" an object's:
    # each record is written open, and its last members appended, in as_dict's order.
    skeleton = as_dict(_without_rows(report))
    objects = skeleton.pop("objects")
    totals = skeleton.pop("totals")
    out.write(dumps(skeleton)[:-1] + ',"objects":[')
    for i, (o, record) in enumerate(zip(report.objects, objects)):
        del record["functions"], record["lines"]
        out.write(("," if i else "") + dumps(record)[:-1] + ',"functions":[')
        for start in range(0, len(o.functions), _FUNCTIONS_PER_WRITE):
            batch = o.functions[start:start + _FUNCTIONS_PER_WRITE]
            out.write(("," if start else "") + dumps([function_json(f) for f in batch])[1:-1])
        out.write('],"lines":[')
        for j, records in enumerate(_line_records(o.line_counts, dumps)):
            out.write(("," if j else "") + records)
        out.write("]}")
    out.write('],"totals":' + dumps(totals) + "}\n")


_FUNCTIONS_PER_WRITE = 2000


def _line_records(line_counts: dict[str, dict[int, int]], dumps) -> Iterator[str]:
    """Each file's line records, as as_dict orders them (by file, then line), made a
    file at a time: the file's JSON string is the same in each of its records."""
    for path, lines in sorted(line_counts.items()):
        if not lines:
            continue  # a file without lines adds no record (nor an empty one between commas)
        head = f'{{"file":{dumps(path)},"line":'
        yield ",".join([f'{head}{n},"count":{lines[n]}}}' for n in sorted(lines)])


def _without_rows(report: Report) -> Report:
    return dataclasses.replace(report, objects=[dataclasses.replace(o, functions=[], line_counts={})
                                                for o in report.objects])


class JsonReporter(Reporter):
    name = "json"
    file_name = "coverage.json"
    help = "every function and line with its count, for scripts (a stable contract)"
    default = True

    def write(self, report: Report, out, context: WriteContext) -> None:
        write(report, out)
