"""What every report format is: a name, the file (or folder) it writes, a help line, and
`write`. The formats live in bpfcov/report/formats/, one module each; adding a module with
a Reporter subclass adds a format (formats/__init__.py finds it).

Writers get the shaped Report and a WriteContext; they never open the output file
themselves: report/writers.py owns it (temporary name, atomic rename, errors).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, TextIO

from bpfcov.report.model import Report
from bpfcov.report.sources import SourceReader


@dataclass(frozen=True)
class WriteContext:
    """What a writer may use besides the report."""

    sources: SourceReader
    lcov_format: int = 1  # 2 adds function end lines to lcov's FN records


class Reporter:
    name: ClassVar[str]
    file_name: ClassVar[str]     # under the output folder
    help: ClassVar[str]          # one line, for --help
    folder: ClassVar[bool] = False  # writes a folder of files (given its path) instead of one stream
    writes_path: ClassVar[bool] = False  # writes its one file itself, given a path (a database)
    default: ClassVar[bool] = False  # written when no --format is given
    # It shows the pruning plan: written once the plans are made (report/pipeline.py's
    # add_plans). A format that never reads FunctionRow.prune says False, and is written meanwhile.
    needs_plan: ClassVar[bool] = True

    def write(self, report: Report, out: TextIO | str, context: WriteContext) -> None:
        """Write `report` to the stream `out` (or, for a folder format, into the folder `out`;
        for one that writes a path, to the file `out`, which does not exist yet)."""
        raise NotImplementedError

    def parts(self, report: Report, folder: str, context: WriteContext) -> list[Part]:
        """A folder format's work, in pieces that may run side by side (each in a process
        of its own) into `folder`. One piece, `write`, unless the format splits it."""
        return [Part(f"writing the {self.name} report", self.needs_plan,
                     lambda: self.write(report, folder, context))]


@dataclass(frozen=True)
class Part:
    """A piece of writing a report: a format that is one file, or part of a folder format."""

    name: str                   # what it does, for an error message
    needs_plan: bool            # run once the pruning plans are made
    work: Callable[[], None]
