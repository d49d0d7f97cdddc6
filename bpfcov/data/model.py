"""What one run measured: plain data shared by the engine (which fills it), the data file
(which stores it) and the reports (which read it)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from bpfcov.probes.model import ObjectIndex

MODES = ("hit", "count")


@dataclass
class ObjectCoverage:
    index: ObjectIndex
    function_counts: np.ndarray              # int64, one per index.functions
    line_counts: np.ndarray | None = None    # int64, one per index.lines row

    def function_status(self, i: int) -> str:
        if not self.index.functions[i].measured:
            return "unmeasured"
        return "hit" if self.function_counts[i] > 0 else "unhit"


@dataclass
class RunCoverage:
    mode: str                   # "hit": counts are lower bounds; "count": exact
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
