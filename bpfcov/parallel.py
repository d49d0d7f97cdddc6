"""Independent pieces of work run side by side in forked children, on a machine with a
second CPU: how a big report is written in the time of its largest part.

A child gets the parent's objects as they are (copy-on-write: nothing to send), writes its
files, and sends back only the exception that stopped it. Forking is safe only where no
other thread runs: a child could inherit a lock held by a thread it does not have. So
with threads about, or one CPU, each piece runs here, at once.
"""

from __future__ import annotations

import os
import pickle
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from bpfcov.errors import BpfcovError


def can_fork() -> bool:
    return (os.cpu_count() or 1) > 1 and threading.active_count() == 1 and hasattr(os, "fork")


class Children:
    """The pieces started so far; see side_by_side."""

    def __init__(self) -> None:
        self._forking = can_fork()
        self._running: list[tuple[str, int, int]] = []  # (what it does, pid, its pipe)

    def start(self, name: str, work: Callable[[], None]) -> None:
        """Start `work()` beside this process (or, when forking is not safe, do it now).
        `name` says what it does, in an error message: "writing the source pages"."""
        if self._forking:
            self._running.append((name, *_forked(work)))
        else:
            work()

    def join(self) -> list[BaseException]:
        """Wait for every child; the exceptions they failed with, in the order started."""
        running, self._running = self._running, []
        return [failure for failure in (_join(*child) for child in running) if failure is not None]

    def stop(self) -> None:
        """Interrupt every child (its clean-up removes its temporary files) and wait for it."""
        for _, pid, _ in self._running:
            os.kill(pid, signal.SIGINT)
        self.join()


@contextmanager
def side_by_side() -> Iterator[Children]:
    """Children to start pieces of work in. Leaving the block waits for all of them and
    raises the first failure; an exception inside it stops them first, and goes on."""
    children = Children()
    try:
        yield children
    except BaseException:
        children.stop()
        raise
    failures = children.join()
    if failures:
        raise failures[0]


def _forked(work: Callable[[], None]) -> tuple[int, int]:
    """Start `work()` in a forked child: (its pid, the pipe on which it sends the
    exception that stopped it, pickled; nothing when it succeeds)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid:
        os.close(write_end)
        return pid, read_end
    status = 0
    try:
        os.close(read_end)
        # Ctrl-C, or the parent giving up, must run the work's clean-up of temporary
        # files, whatever handler the parent had installed.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        work()
    except BaseException as e:  # noqa: BLE001 - every failure goes to the parent
        status = 1
        try:
            message = pickle.dumps(e)
        except Exception:  # noqa: BLE001 - an exception that does not pickle
            message = pickle.dumps(RuntimeError(repr(e)))
        with os.fdopen(write_end, "wb") as pipe:
            pipe.write(message)
    finally:
        os._exit(status)  # never back into the parent's code (or its buffered output)


def _join(name: str, pid: int, pipe: int) -> BaseException | None:
    """Wait for a child of _forked; the exception it failed with, if any."""
    with os.fdopen(pipe, "rb") as f:
        message = f.read()
    _, status = os.waitpid(pid, 0)
    if message:
        return pickle.loads(message)
    if status:
        return BpfcovError(f"{name} failed: its process ended with status {status:#x}")
    return None
