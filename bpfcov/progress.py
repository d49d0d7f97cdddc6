"""Progress on stderr for slow steps: silent for the first second, then a counter.

On a terminal the counter redraws one line; elsewhere (CI logs) it prints one line per
phase, so logs do not fill with carriage returns.
"""

from __future__ import annotations

import sys
import time


class Progress:
    DELAY = 1.0

    def __init__(self, label: str, quiet: bool = False, stream=None):
        self.label = label
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.start = time.monotonic()
        self.shown = False
        self._last_phase: str | None = None
        self._tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def update(self, phase: str, done: int | None = None, total: int | None = None) -> None:
        if self.quiet or time.monotonic() - self.start < self.DELAY:
            return
        if self._tty:
            counter = f" {done:,}/{total:,}" if done is not None and total else ""
            self.stream.write(f"\rbpfcov: {self.label}: {phase}{counter}\x1b[K")
            self.stream.flush()
            self.shown = True
        elif phase != self._last_phase:
            self.stream.write(f"bpfcov: {self.label}: {phase}...\n")
            self._last_phase = phase

    def transfer(self, phase: str, received: int, total: int) -> None:
        """A download's progress, in bytes of `total` (0: not known yet)."""
        if self.quiet or time.monotonic() - self.start < self.DELAY:
            return
        if self._tty:
            of = f" of {_megabytes(total)}" if total > 0 else ""
            self.stream.write(f"\rbpfcov: {self.label}: {phase} {_megabytes(received)}{of}\x1b[K")
            self.stream.flush()
            self.shown = True
        elif phase != self._last_phase:  # a log gets one line, with the size when the server gave it
            size = f" ({_megabytes(total)})" if total > 0 else ""
            self.stream.write(f"bpfcov: {self.label}: {phase}{size}...\n")
            self._last_phase = phase

    def done(self) -> None:
        if self.shown and self._tty:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def _megabytes(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"
