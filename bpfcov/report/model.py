"""What every report shows, shaped once from the measured data (see pipeline.py).

Plain data: the writers (lcov, HTML, JSON, Cobertura) only format it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bpfcov.prune.model import Prune, PrunePlan


@dataclass
class FunctionRow:
    object_path: str
    name: str                # mangled: the identity
    display_name: str
    address: int
    size: int
    file: str | None         # as reported (after --path-map / --relative-to)
    line: int | None
    end_line: int | None
    count: int               # calls plus inlined instances' runs (lcov's FNDA)
    status: str              # "hit" | "unhit" | "unmeasured" | "no-code"
    aliases: tuple[str, ...]
    probe: str               # "entry" | "moved" | "unmeasured" | "inlined" | "no-code"
    probe_note: str
    anchor: str = ""         # id of this function in the HTML report
    index: int = -1          # its place among its object's functions (as the probe index has them)
    inlined_instances: int = 0  # places the compiler inlined it
    inlined_count: int = 0      # runs of those instances (the rest of `count` are calls)
    prune: Prune | None = None  # never-executed out-of-line functions, once their object's plan is made
    first_hit_ns: int = 0       # ns into the run at which it first ran; 0: unknown (count mode) or never
    # Only in a report from a fleet store (bpfcov/fleet/): the hosts it ran on, and the
    # Unix times it first and last ran (None: never).
    hosts: int | None = None
    first_executed: float | None = None
    last_executed: float | None = None

    @property
    def calls(self) -> int:
        return self.count - self.inlined_count

    @property
    def own_bytes(self) -> int:
        """Its bytes that are no other function's: a function that exists only inlined has
        its code inside its callers', which count it already."""
        return 0 if self.probe == "inlined" else self.size


@dataclass
class SourceFile:
    """One source file's functions and measured lines, across every object."""

    path: str                          # as reported
    original_path: str                 # as the compiler recorded it (for reading the source)
    functions: list[FunctionRow] = field(default_factory=list)
    lines: dict[int, int] = field(default_factory=dict)  # measured line -> count
    build_ids: list[str] = field(default_factory=list)  # of the objects built from it

    @property
    def functions_hit(self) -> int:
        return sum(f.status == "hit" for f in self.functions)

    @property
    def dead_bytes(self) -> int:
        return sum(f.own_bytes for f in self.functions if f.status == "unhit")


@dataclass
class Watched:
    """How much of a fleet watched a build: what a never-executed function's verdict rests on."""

    hosts: int
    seconds: float


@dataclass
class ObjectReport:
    path: str
    build_id: str | None
    functions: list[FunctionRow]
    line_counts: dict[str, dict[int, int]]  # file as reported -> line -> count
    warnings: list[str]
    plan: PrunePlan | None = None      # None when the object's file could not be read, or not yet made
    watched: Watched | None = None     # only in a report from a fleet store

    @property
    def lines(self) -> list[tuple[str, int, int]]:
        """(file, line, count) in order. Sorted when asked: only coverage.json lists an
        object's lines, and a big object has millions."""
        return [(path, line, lines[line]) for path, lines in sorted(self.line_counts.items())
                for line in sorted(lines)]

    @property
    def dead_bytes(self) -> int:
        return sum(f.own_bytes for f in self.functions if f.status == "unhit")

    @property
    def total_bytes(self) -> int:
        return sum(f.own_bytes for f in self.functions)


@dataclass
class Totals:
    functions: int = 0
    functions_hit: int = 0
    functions_unmeasured: int = 0
    functions_no_code: int = 0
    dead_bytes: int = 0
    unreachable_bytes: int = 0  # own bytes of never-executed functions of class unreachable
    lines: int = 0
    lines_hit: int = 0

    @property
    def functions_measured(self) -> int:
        return self.functions - self.functions_unmeasured - self.functions_no_code

    @property
    def function_percent(self) -> float:
        return 100.0 * self.functions_hit / self.functions_measured if self.functions_measured else 100.0

    @property
    def line_percent(self) -> float:
        return 100.0 * self.lines_hit / self.lines if self.lines else 100.0


@dataclass
class Report:
    mode: str
    command: list[str]
    started: float
    duration: float | None
    host: str
    kernel: str
    lines: bool
    complete: bool
    objects: list[ObjectReport]
    files: list[SourceFile]    # sorted by path; only functions with a source file
    totals: Totals
    bpfcov_version: str
    attach_method: str | None = None  # how the probes were attached (None: merged or older data)
    # (object, its index, its functions' statuses) whose pruning plan is still to be made:
    # pipeline.add_plans makes them. Empty in every report build_report returns by default.
    pending_plans: list = field(default_factory=list)
