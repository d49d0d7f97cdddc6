"""The words every part of bpfcov uses for how a run counted and what a function did.
Kept free of heavy imports: the command line reads them before it loads numpy."""

from __future__ import annotations

import enum

from bpfcov.errors import BpfcovError


class Mode(enum.StrEnum):
    HIT = "hit"      # each probe leaves after its first hit: counts are lower bounds
    COUNT = "count"  # every hit counted: counts are exact

    @classmethod
    def parse(cls, text: str) -> Mode:
        try:
            return cls(text)
        except ValueError:
            raise BpfcovError(f"unknown mode {text!r}: choose from {', '.join(m.value for m in cls)}") from None


class Status(enum.StrEnum):
    HIT = "hit"                # it ran
    UNHIT = "unhit"            # it was probed and never ran: dead, as far as this run knows
    UNMEASURED = "unmeasured"  # it could not be probed: never to be called dead
    NO_CODE = "no-code"        # the compiler left no code of it (its callers still use its source)
