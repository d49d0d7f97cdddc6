"""Combining and comparing runs: `bpfcov merge` and `bpfcov diff`.

Objects are matched by build-id (the same binary from many hosts or paths), or by path when
a binary has none; functions by mangled name; line probes by address.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bpfcov.data.model import ObjectCoverage, RunCoverage
from bpfcov.data.status import Mode, Status
from bpfcov.errors import BpfcovError


def object_key(obj: ObjectCoverage) -> str:
    return f"build-id:{obj.index.build_id}" if obj.index.build_id else f"path:{obj.index.path}"


def merge(runs: list[RunCoverage]) -> RunCoverage:
    """One run whose counts are the sums of `runs`. Hit-mode counts make a hit-mode result."""
    if not runs:
        raise BpfcovError("nothing to merge")
    lines = all(r.lines for r in runs)
    merged = RunCoverage(
        mode=Mode.COUNT if all(r.mode == Mode.COUNT for r in runs) else Mode.HIT,
        command=[word for r in runs for word in (r.command if len(runs) == 1 else ["[", *r.command, "]"])],
        started=min(r.started for r in runs),
        ended=max((r.ended for r in runs if r.ended is not None), default=None),
        host=",".join(sorted({r.host for r in runs})), kernel=",".join(sorted({r.kernel for r in runs})),
        lines=lines, complete=all(r.complete for r in runs), bpfcov_version=runs[0].bpfcov_version)
    merged.objects = merge_objects([obj for run in runs for obj in run.objects], lines)
    return merged


def merge_objects(objects: list[ObjectCoverage], lines: bool) -> list[ObjectCoverage]:
    """One object per binary (build-id, else path) with the counts of all its copies summed:
    many runs of it, or one run in which a test runner ran it from several files."""
    merged: list[ObjectCoverage] = []
    by_key: dict[str, ObjectCoverage] = {}
    for obj in objects:
        key = object_key(obj)
        if key not in by_key:
            by_key[key] = ObjectCoverage(obj.index, obj.function_counts.copy(),
                                         obj.line_counts.copy() if lines and obj.line_counts is not None else None,
                                         obj.inlined().copy(), obj.first_hit_ns().copy())
            if not lines:
                by_key[key].index.lines = None
            merged.append(by_key[key])
            continue
        target = by_key[key]
        position = {f.name: i for i, f in enumerate(target.index.functions)}
        their_inlined, their_first = obj.inlined(), obj.first_hit_ns()
        ours_first = target.first_hits
        for i, f in enumerate(obj.index.functions):
            j = position.get(f.name)
            if j is None:
                raise BpfcovError(f"{obj.index.path}: function {f.name} is missing from another run of "
                                  "the same build-id; the data files disagree")
            target.function_counts[j] += obj.function_counts[i]
            target.inlined_counts[j] += their_inlined[i]  # type: ignore[index]  # set just above
            # The earliest first hit into any run; 0 (unknown) yields to any known one.
            if their_first[i] and (not ours_first[j] or their_first[i] < ours_first[j]):  # type: ignore[index]
                ours_first[j] = their_first[i]  # type: ignore[index]
        ours, theirs = target.index.lines, obj.index.lines
        if lines and target.line_counts is not None and obj.line_counts is not None \
                and ours is not None and theirs is not None:
            where = np.searchsorted(ours.address, theirs.address)
            if len(where) and (where.max() >= len(ours.address) or
                               not np.array_equal(ours.address[where], theirs.address)):
                raise BpfcovError(f"{obj.index.path}: line probes differ between runs of the same build-id")
            np.add.at(target.line_counts, where, obj.line_counts)
    return merged


@dataclass
class Change:
    object_path: str
    name: str
    display_name: str


@dataclass
class Diff:
    newly_executed: list[Change]
    no_longer_executed: list[Change]


def diff(old: RunCoverage, new: RunCoverage) -> Diff:
    def executed(run: RunCoverage) -> dict[tuple[str, str], Change]:
        out = {}
        for obj in run.objects:
            key = object_key(obj)
            for i, f in enumerate(obj.index.functions):
                if obj.function_status(i) is Status.HIT:
                    out[(key, f.name)] = Change(obj.index.path, f.name, f.display_name)
        return out

    def measured(run: RunCoverage) -> set[tuple[str, str]]:
        return {(object_key(o), f.name) for o in run.objects for f in o.index.functions if f.measured}

    before, after = executed(old), executed(new)
    # Only functions both runs could see are compared: one missing from a run is unknown.
    both = measured(old) & measured(new)
    newly = [after[k] for k in sorted(after.keys() - before.keys()) if k in both]
    gone = [before[k] for k in sorted(before.keys() - after.keys()) if k in both]
    return Diff(newly, gone)
