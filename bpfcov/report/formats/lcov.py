"""The lcov tracefile, written in the subset every real reader accepts.

From docs/lcov-readers.md: lcov 1.16 misreads end lines in FN, so none by default
(--lcov-format 2 adds them); a comma or newline in a name breaks lcov, lcov_cobertura and
diff-cover, so names are mangled and sanitized; FN comes before its FNDA, because
lcov_cobertura loses counts otherwise; no blank or comment lines (diff-cover raises on
them), no checksums, no branch records; every file has DA records, because readers drop a
file without them and Codecov and Coveralls read only DA.
"""

from __future__ import annotations

import re

from bpfcov.report.model import Report
from bpfcov.report.reporter import Reporter, WriteContext
from bpfcov.report.sources import SourceReader

_UNSAFE = re.compile(r"[\x00-\x20,\x7f]")


def safe_name(name: str) -> str:
    """A function name with nothing in it that could split an lcov record."""
    return _UNSAFE.sub("_", name) or "_"


def safe_path(path: str) -> str:
    return re.sub(r"[\x00-\x1f\x7f]", "?", path)


def write(report: Report, out, sources: SourceReader, format_version: int = 1) -> None:
    out.write("TN:\n")
    for source in report.files:
        length = sources.line_count(source.original_path) or sources.line_count(source.path)
        functions = [f for f in source.functions if length is None or (f.line or 0) <= length]
        lines = {n: c for n, c in source.lines.items() if length is None or n <= length}
        if not lines:
            continue
        out.write(f"SF:{safe_path(source.path)}\n")
        # The same function may come from two objects (a static library linked twice):
        # one FN record, with the counts summed.
        merged: dict[str, list] = {}
        for f in functions:
            entry = merged.setdefault(safe_name(f.name), [f, 0])
            entry[1] += f.count
        for name, (f, count) in merged.items():
            if format_version >= 2 and f.end_line:
                out.write(f"FN:{f.line},{f.end_line},{name}\n")
            else:
                out.write(f"FN:{f.line},{name}\n")
            out.write(f"FNDA:{count},{name}\n")
        out.write(f"FNF:{len(merged)}\n")
        out.write(f"FNH:{sum(1 for _, count in merged.values() if count > 0)}\n")
        out.write("".join([f"DA:{line},{lines[line]}\n" for line in sorted(lines)]))  # one write: files have thousands
        out.write(f"LF:{len(lines)}\n")
        out.write(f"LH:{sum(1 for c in lines.values() if c > 0)}\n")
        out.write("end_of_record\n")


class LcovReporter(Reporter):
    name = "lcov"
    file_name = "coverage.info"
    needs_plan = False
    help = "lcov tracefile for genhtml, Codecov, Coveralls, diff-cover"
    default = True

    def write(self, report: Report, out, context: WriteContext) -> None:
        write(report, out, context.sources, context.lcov_format)
