"""Python's cycle collector, paused while bpfcov builds many objects that all live on.

Loading a data file, shaping a report and writing it each create hundreds of thousands of
objects (a row per function, a dict per source file's lines) and keep nearly all of them
to the end. Each of the collector's full passes walks every object alive, and those
passes come more often as the heap grows: at 50,000 functions they were a third of
`bpfcov report`'s time, and freed nothing. These objects hold no reference cycles that
must go early, so the collector waits until the work is done.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def gc_paused() -> Iterator[None]:
    """No cycle collection inside (usable as a decorator too); nested uses are one pause."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
