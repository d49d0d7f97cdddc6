"""--format coveragepy: the native source files' executed lines as a coverage.py data file
(OUT/.coverage.bpfcov, written with coverage's own CoverageData), and their statements
beside it (OUT/bpfcov-statements.json), for the plugin in bpfcov/coveragepy.py.

`coverage combine --append OUT` then puts them into the Python side's .coverage. Line
data only: coverage.py refuses to combine it with branch (arc) data.
"""

from __future__ import annotations

import json
import os

from bpfcov.errors import BpfcovError
from bpfcov.report.model import Report
from bpfcov.report.reporter import Reporter, WriteContext


def native_files(report: Report) -> dict[str, dict[int, int]]:
    """Absolute source path -> measured line -> count, for files with measured lines."""
    files: dict[str, dict[int, int]] = {}
    for source in report.files:
        if not source.lines:
            continue
        # coverage.py names files by absolute path; a path --relative-to made relative
        # is the compiler's again.
        path = source.path if os.path.isabs(source.path) else source.original_path
        lines = files.setdefault(os.path.normpath(path), {})
        for line, count in source.lines.items():
            lines[line] = max(lines.get(line, 0), count)
    return files


class CoveragePyReporter(Reporter):
    name = "coveragepy"
    file_name = ".coverage.bpfcov"
    needs_plan = False
    help = "a coverage.py data file of the native source lines, for `coverage combine` (needs --lines)"
    writes_path = True

    def write(self, report: Report, out, context: WriteContext) -> None:
        from coverage import CoverageData

        from bpfcov.coveragepy import PLUGIN, STATEMENTS_FILE

        if not report.lines:
            raise BpfcovError("--format coveragepy needs line data: trace with --lines")
        files = native_files(report)
        data = CoverageData(basename=out)
        data.add_lines({path: [n for n, c in lines.items() if c > 0] for path, lines in files.items()})
        data.touch_files(list(files), PLUGIN)
        data.write()
        statements = os.path.join(os.path.dirname(out), STATEMENTS_FILE)
        with open(statements + ".tmp", "w") as f:
            json.dump({"format": "bpfcov-statements", "version": 1,
                       "files": {path: sorted(lines) for path, lines in files.items()}}, f)
        os.replace(statements + ".tmp", statements)
