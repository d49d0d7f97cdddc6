"""What a pruning plan says, apart from how it is computed (plan.py): reports read these
without loading the graph's third-party modules (numpy, capstone)."""

from __future__ import annotations

from dataclasses import dataclass

UNREACHABLE, DEAD_ONLY, COLD = "unreachable", "dead-only", "cold"
# Referrers named per cut in reports: enough to see where a reference comes from.
MAX_REFERRERS = 12


@dataclass(frozen=True)
class Prune:
    klass: str
    retained_bytes: int


@dataclass
class Cut:
    """A never-executed function no other never-executed function dominates: remove it,
    and its cluster (the never-executed functions it dominates) goes with it."""

    function: int                 # index into the object's functions
    klass: str
    retained_bytes: int
    cluster: list[int]            # function indices, itself first, then by size
    referenced_by: list[str]      # names of what refers to it, live first (at most MAX_REFERRERS)
    referrers: int                # how many nodes refer to it
    root: str | None              # why it is a static root itself (an export), if it is


@dataclass
class PrunePlan:
    prune: dict[int, Prune]       # function index -> its class and retained bytes
    cuts: list[Cut]               # by retained bytes, largest first
