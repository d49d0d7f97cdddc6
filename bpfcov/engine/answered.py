"""Which probes have told all they can, in hit mode without --lines.

There, each probe asks of each function it stands for (its entry, or a place one of its
inlined copies runs through) one question: did it ever run? Once every function a probe
stands for has been seen running, through this probe or any other, the probe has nothing
left to tell, and each of its future hits would be a wasted trap. A function inlined in
fifty places is answered by the first copy that runs; the other forty-nine probes can go
before they are ever hit (on the sqlite workload, 60% of the probes that got hot were such).

With --lines every probe also tells a line's count, which only its own hits answer.
"""

from __future__ import annotations

import numpy as np

from bpfcov.engine.plan import ObjectPlan


class AnsweredProbes:
    """Kept up to date one batch of first hits at a time, at a cost that grows with the
    functions those hits answer, not with the number of probes."""

    def __init__(self) -> None:
        self._functions_of: dict[int, list[int]] = {}  # probe -> functions it stands for
        self._probes_of: list[np.ndarray] = []          # function -> its probes
        self._open = np.zeros(0, dtype=np.int32)        # probe -> functions not yet seen running
        self._ran = np.zeros(0, dtype=bool)

    def add(self, plan: ObjectPlan) -> None:
        base = len(self._probes_of)
        entries = np.flatnonzero(plan.function_probe >= 0)
        probe = np.concatenate([plan.function_probe[entries], plan.instance_probe])
        function = np.concatenate([entries, plan.instance_function[plan.instance_of_probe]]) + base
        pairs = np.unique(np.stack([function, probe]), axis=1)  # a probe may stand twice for one function
        function, probe = pairs
        order = np.argsort(function, kind="stable")
        bounds = np.searchsorted(function[order], np.arange(base, base + len(plan.function_probe) + 1))
        self._probes_of += [probe[order[a:b]] for a, b in zip(bounds[:-1], bounds[1:])]
        for f, p in zip(function.tolist(), probe.tolist()):
            self._functions_of.setdefault(p, []).append(f)
        end = plan.first_probe + plan.probe_count
        if end > len(self._open):
            self._open = np.concatenate([self._open, np.zeros(end - len(self._open), dtype=np.int32)])
        np.add.at(self._open, probe, 1)
        self._ran = np.concatenate([self._ran, np.zeros(len(plan.function_probe), dtype=bool)])

    def hit(self, probes: list[int]) -> np.ndarray:
        """Note the first hits of `probes`; return the probes that have now told all they
        can (these among them)."""
        ran = {f for p in probes for f in self._functions_of.get(p, ()) if not self._ran[f]}
        if not ran:
            return np.zeros(0, dtype=np.int64)
        self._ran[list(ran)] = True
        asked = np.concatenate([self._probes_of[f] for f in ran])
        np.subtract.at(self._open, asked, 1)
        return np.unique(asked[self._open[asked] == 0])
