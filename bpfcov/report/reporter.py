"""What every report format is: a name, the file (or folder) it writes, a help line, and
`write`. The formats live in bpfcov/report/formats/, one module each; adding a module with
a Reporter subclass adds a format (formats/__init__.py finds it).

Writers get the shaped Report and a WriteContext; they never open the output file
themselves: report/writers.py owns it (temporary name, atomic rename, errors).
"""

from __future__ import annotations

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

    def write(self, report: Report, out: TextIO | str, context: WriteContext) -> None:
        """Write `report` to the stream `out` (or, for a folder format, into the folder `out`;
        for one that writes a path, to the file `out`, which does not exist yet)."""
        raise NotImplementedError
