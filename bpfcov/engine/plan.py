"""From probe indexes to probe numbers: which offsets of which object get which slots.

Each distinct file offset of an object gets one probe (a function entry is usually also a
line address; probing it twice would count twice). Functions and lines then refer to
their probe's slot, so after a run a function's count is counts[function_probe[i]].
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

    @property
    def probe_count(self) -> int:
        return len(self.offsets)


def plan_object(index: ObjectIndex, first_probe: int) -> ObjectPlan:
    """Number the probes of one object from `first_probe` on."""
    func_offsets = np.array([f.probe_offset if f.measured else -1 for f in index.functions], dtype=np.int64)
    parts = [func_offsets[func_offsets >= 0]]
    line_offsets = None
    if index.lines is not None:
        line_offsets = index.lines.offset.astype(np.int64)
        parts.append(line_offsets)
    offsets = np.unique(np.concatenate(parts))

    def number(o: np.ndarray) -> np.ndarray:
        slot = np.searchsorted(offsets, o).astype(np.int64) + first_probe
        return np.where(o >= 0, slot, -1)

    return ObjectPlan(index, first_probe, offsets.astype(np.uint64), number(func_offsets),
                      number(line_offsets) if line_offsets is not None else None)
