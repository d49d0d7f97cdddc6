"""What one run measured: plain data shared by the engine (which fills it), the data file
(which stores it) and the reports (which read it)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from bpfcov.data.status import Status
from bpfcov.probes.model import ObjectIndex


@dataclass
class ObjectCoverage:
    """The counts of one object's probes.

    The one rule for "executed", which every report, `diff` and `merge` go by: a function
    ran when its entry probe counted a hit, or when any line inside it did (its entry may
    have been probed late, or moved). Its count is its entry's, the calls; only when the
    entry counted none does its busiest line's count stand in. Unmeasured functions are
    never called unexecuted."""

    index: ObjectIndex
    function_counts: np.ndarray              # int64, one per index.functions: hits at the entry
    line_counts: np.ndarray | None = None    # int64, one per index.lines row
    _executed: np.ndarray | None = field(default=None, repr=False, compare=False)

    def executed_counts(self) -> np.ndarray:
        """Per function: the entry's count, or its busiest line's when the entry has none."""
        if self._executed is None:
            counts = np.asarray(self.function_counts, dtype=np.int64)
            lines = self.index.lines
            if lines is not None and self.line_counts is not None and len(self.line_counts):
                busiest = np.zeros(len(counts), dtype=np.int64)
                np.maximum.at(busiest, lines.function.astype(np.int64), self.line_counts.astype(np.int64))
                counts = np.where(counts > 0, counts, busiest)
            self._executed = counts
        return self._executed

    def function_count(self, i: int) -> int:
        return int(self.executed_counts()[i])

    def function_status(self, i: int) -> Status:
        if not self.index.functions[i].measured:
            return Status.UNMEASURED
        return Status.HIT if self.executed_counts()[i] > 0 else Status.UNHIT


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
