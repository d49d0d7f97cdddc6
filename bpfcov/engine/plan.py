"""From probe indexes to probe numbers: which offsets of which object get which slots.

Each distinct file offset of an object gets one probe (a function entry is usually also a
line address; probing it twice would count twice). Functions and lines then refer to
their probe's slot, so after a run a function's count is counts[function_probe[i]]. An
inlined instance has several probes (its entry, then wherever else control can enter its
code: see probes/index.py). It ran as often as its entry counted, or, when the entry
counted none (the compiler copied its code onto another path), as often as its busiest
other probe; a function's inlined runs are the sum over its instances (inlined_runs).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bpfcov.probes.model import ObjectIndex


@dataclass
class ObjectPlan:
    index: ObjectIndex
    first_probe: int            # global number of this object's first probe
    offsets: np.ndarray         # uint64, distinct, sorted
    function_probe: np.ndarray  # int64 per function: global probe number, -1 if not probed
    line_probe: np.ndarray | None  # int64 per line-table row, or None without --lines
    instance_function: np.ndarray  # int64 per probed inlined instance: the function it is of
    # int64 per probe of an inlined instance: which instance, the probe, whether its entry.
    instance_of_probe: np.ndarray
    instance_probe: np.ndarray
    instance_entry: np.ndarray     # bool

    def inlined_runs(self, counts: np.ndarray) -> np.ndarray:
        """Per function of the index: the runs of its inlined instances, from the counts."""
        hits = counts[self.instance_probe].astype(np.int64)
        entry = np.zeros(len(self.instance_function), dtype=np.int64)
        busiest = np.zeros(len(self.instance_function), dtype=np.int64)
        np.add.at(entry, self.instance_of_probe[self.instance_entry], hits[self.instance_entry])
        np.maximum.at(busiest, self.instance_of_probe[~self.instance_entry], hits[~self.instance_entry])
        runs = np.zeros(len(self.index.functions), dtype=np.int64)
        np.add.at(runs, self.instance_function, np.where(entry > 0, entry, busiest))
        return runs

    @property
    def probe_count(self) -> int:
        return len(self.offsets)


def plan_object(index: ObjectIndex, first_probe: int) -> ObjectPlan:
    """Number the probes of one object from `first_probe` on."""
    func_offsets = np.array([f.probe_offset if f.probe_offset is not None else -1 for f in index.functions],
                            dtype=np.int64)
    instances = [(i, probes) for i, f in enumerate(index.functions) for probes in f.inlined_offsets]
    instance_function = np.array([i for i, _ in instances], dtype=np.int64)
    instance_of_probe = np.array([n for n, (_, probes) in enumerate(instances) for _ in probes], dtype=np.int64)
    instance_offsets = np.array([o for _, probes in instances for o in probes], dtype=np.int64)
    instance_entry = np.array([k == 0 for _, probes in instances for k in range(len(probes))], dtype=bool)
    parts = [func_offsets[func_offsets >= 0], instance_offsets]
    line_offsets = None
    if index.lines is not None:
        line_offsets = index.lines.offset.astype(np.int64)
        parts.append(line_offsets)
    offsets = np.unique(np.concatenate(parts))

    def number(o: np.ndarray) -> np.ndarray:
        slot = np.searchsorted(offsets, o).astype(np.int64) + first_probe
        return np.where(o >= 0, slot, -1)

    return ObjectPlan(index, first_probe, offsets.astype(np.uint64), number(func_offsets),
                      number(line_offsets) if line_offsets is not None else None,
                      instance_function, instance_of_probe, number(instance_offsets), instance_entry)
