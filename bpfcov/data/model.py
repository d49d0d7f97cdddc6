"""What one run measured: plain data shared by the engine (which fills it), the data file
(which stores it) and the reports (which read it)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from bpfcov.data.status import Status
from bpfcov.probes.model import Function, ObjectIndex, ProbeStatus


@dataclass
class FleetFacts:
    """What a fleet store (bpfcov/fleet/) knows of an object beyond its summed counts."""

    hosts: np.ndarray             # int64 per function: the hosts it ran on
    first_executed: np.ndarray    # float64 per function: Unix time it first ran; 0: never
    last_executed: np.ndarray     # float64 per function: time of the push that last saw it run
    hosts_watching: int = 0       # the hosts that watched the build in the selection
    watched_seconds: float = 0.0  # summed over those hosts' runs
    unknown_functions: int = 0    # counted by hosts whose index had functions the stored one lacks


@dataclass
class ObjectCoverage:
    """The counts of one object's probes.

    The one rule for "executed", which every report, `diff` and `merge` go by: a function
    ran when its entry probe counted a hit, or when any line inside it did (its entry may
    have been probed late, or moved), or when any of its inlined instances ran. Its count
    is its calls plus its inlined instances' runs: the calls are its entry's count, and
    only when the entry counted none does its busiest line's count stand in. A function
    is called unexecuted only when every place its code can run from was probed:
    otherwise it is unmeasured; one the compiler left no code of is no-code."""

    index: ObjectIndex
    function_counts: np.ndarray              # int64, one per index.functions: hits at the entry
    line_counts: np.ndarray | None = None    # int64, one per index.lines row
    inlined_counts: np.ndarray | None = None  # int64, one per function: its inlined instances' runs
    # int64, one per function: ns into the run at which it first ran, at its entry or any
    # of its lines (hit mode sees first hits; count mode does not, and leaves 0: unknown)
    first_hits: np.ndarray | None = None
    fleet: FleetFacts | None = None          # only in a report from a fleet store
    _calls: np.ndarray | None = field(default=None, repr=False, compare=False)

    def call_counts(self) -> np.ndarray:
        """Per function: the entry's count, or its busiest line's when the entry has none."""
        if self._calls is None:
            counts = np.asarray(self.function_counts, dtype=np.int64)
            lines = self.index.lines
            if lines is not None and self.line_counts is not None and len(self.line_counts):
                busiest = np.zeros(len(counts), dtype=np.int64)
                np.maximum.at(busiest, lines.function.astype(np.int64), self.line_counts.astype(np.int64))
                counts = np.where(counts > 0, counts, busiest)
            self._calls = counts
        return self._calls

    def inlined(self) -> np.ndarray:
        if self.inlined_counts is None:
            return np.zeros(len(self.index.functions), dtype=np.int64)
        return np.asarray(self.inlined_counts, dtype=np.int64)

    def first_hit_ns(self) -> np.ndarray:
        if self.first_hits is None:
            return np.zeros(len(self.index.functions), dtype=np.int64)
        return np.asarray(self.first_hits, dtype=np.int64)

    def executed_counts(self) -> np.ndarray:
        """Per function: its calls plus its inlined instances' runs."""
        return self.call_counts() + self.inlined()

    def function_count(self, i: int) -> int:
        return int(self.executed_counts()[i])

    def function_status(self, i: int) -> Status:
        ran = self.call_counts()[i] > 0 or (self.inlined_counts is not None and self.inlined_counts[i] > 0)
        return _status(bool(ran), self.index.functions[i])

    def function_statuses(self) -> list[Status]:
        """function_status of every function, at once: a report needs them all."""
        ran = ((self.call_counts() > 0) | (self.inlined() > 0)).tolist()
        return [_status(r, f) for r, f in zip(ran, self.index.functions)]


def _status(ran: bool, f: Function) -> Status:
    if ran:
        return Status.HIT
    if f.probe is ProbeStatus.NO_CODE:
        return Status.NO_CODE
    return Status.UNHIT if f.fully_measured else Status.UNMEASURED


@dataclass
class RunCoverage:
    mode: str                   # a Mode: "hit" (counts are lower bounds) or "count" (exact)
    command: list[str]
    started: float              # Unix time
    ended: float | None
    host: str
    kernel: str
    lines: bool
    objects: list[ObjectCoverage] = field(default_factory=list)
    complete: bool = True       # False for a periodic snapshot of a run still going
    bpfcov_version: str = ""
    # How the tracing went (relinks, time spent relinking, probes left at exit, bpfcov's
    # peak memory): for benchmarks and for people wondering what bpfcov cost.
    stats: dict = field(default_factory=dict)

    @property
    def duration(self) -> float | None:
        return None if self.ended is None else max(0.0, self.ended - self.started)
