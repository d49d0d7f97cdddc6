"""bpfcov's coverage.py plugin: native source files beside Python ones in coverage.py's
reports, `combine` and `--fail-under`.

`bpfcov ... --lines --format coveragepy` writes OUT/.coverage.bpfcov, a coverage.py data
file holding the executed lines of each native source file with this plugin as its file
tracer, and OUT/bpfcov-statements.json, the lines of each file that have code (the DWARF
line table's, as bpfcov measured them). coverage.py asks the plugin of a file for its
FileReporter when it reports; the statements come from that JSON file, so reporting
needs neither the binary nor BPF. Enable it and say where the statements are:

    [tool.coverage.run]
    plugins = ["bpfcov.coveragepy"]
    [tool.coverage."bpfcov.coveragepy"]
    statements = "bpfcov-out"     # the default: a folder holding bpfcov-statements.json, or the file

The plugin traces nothing itself: Python files stay coverage.py's own.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable

import coverage
from coverage.plugin import FileReporter

PLUGIN = "bpfcov.coveragepy.NativeSources"  # how coverage.py names it: module, then class
STATEMENTS_FILE = "bpfcov-statements.json"
DEFAULT_STATEMENTS = "bpfcov-out"


def read_statements(places: Iterable[str]) -> dict[str, set[int]]:
    """The statements of each native file, from every statements file named (a folder
    means the one inside it), united: several runs may have measured one file."""
    statements: dict[str, set[int]] = {}
    for place in places:
        path = os.path.join(place, STATEMENTS_FILE) if os.path.isdir(place) else place
        try:
            with open(path) as f:
                files = json.load(f)["files"]
        except FileNotFoundError:
            raise coverage.CoverageException(
                f"bpfcov.coveragepy: no statements file at {path} (set 'statements' in the plugin's section)") from None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise coverage.CoverageException(f"bpfcov.coveragepy: cannot read {path}: {e}") from None
        for name, lines in files.items():
            statements.setdefault(name, set()).update(int(n) for n in lines)
    return statements


class NativeSources(coverage.CoveragePlugin):
    def __init__(self, places: list[str]) -> None:
        self._places = places
        self._statements: dict[str, set[int]] | None = None

    def file_reporter(self, filename: str) -> FileReporter:
        if self._statements is None:  # read once, when coverage.py first reports a native file
            self._statements = read_statements(self._places)
        return NativeFileReporter(filename, self._statements.get(filename, set()))


class NativeFileReporter(FileReporter):
    def __init__(self, filename: str, statements: set[int]) -> None:
        super().__init__(filename)
        self._statements = statements

    def lines(self) -> set[int]:
        return set(self._statements)

    def source(self) -> str:
        with open(self.filename, encoding="utf-8", errors="replace") as f:
            return f.read()


def coverage_init(reg, options: dict) -> None:
    places = str(options.get("statements") or DEFAULT_STATEMENTS).split()
    reg.add_file_tracer(NativeSources(places))
