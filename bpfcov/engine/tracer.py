"""Keeping probes attached: the links of every probed object, in count or hit mode.

Probes are numbered globally (a probe's number is its cookie and its slot in `counts`)
and cut into shards: runs of one object's probes, each shard one uprobe_multi link.

- count mode: every shard is linked once and left alone; every hit is counted.
- hit mode: a probe that has fired is of no more use, and each further hit costs a trap
  (~5 µs). The BPF program reports a probe's first hit through a ring buffer; a thread
  here wakes on it and replaces each affected shard's link with one that leaves out every
  probe already hit, new link first so that no probe has a gap. Closing the old link
  removes its breakpoints and then waits for an RCU grace period (~30 ms), so closes run
  on other threads, off the path between a first hit and the new link.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from bpfcov.engine.program import CounterProgram
from bpfcov.engine.uprobe_multi import MAX_PROBES_PER_LINK, LinkError, create_link

# Probes per link. While a link is replaced, its hot probes keep trapping (~5 µs a hit),
# and replacing costs about 7 µs per probe it keeps while the target runs (each takes the
# target's mmap lock): small links narrow fastest. Measured on the sqlite workload
# (bench/): with --lines (52,000 probes) at N=200,000, 128 probes per link ran the program
# 2.7x untraced against 3.7x with 1,024; functions alone, 0.98x against 1.09x at N=2,000,000.
# Their cost is at the end: 411 links take 0.55 s to close with closes in parallel.
DEFAULT_SHARD_SIZE = 128


@dataclass
class Shard:
    path: str
    offsets: np.ndarray    # file offsets, uint64
    probes: np.ndarray     # global probe numbers (cookies), uint64
    link_fd: int | None = None
    remaining: int = 0


@dataclass
class TracerStats:
    relinks: int = 0
    relink_seconds: float = 0.0
    links_created: int = 0
    errors: list[str] = field(default_factory=list)


class _LinkCloser:
    """Closes link fds in the background. Closing a link removes its breakpoints at once,
    then waits out an RCU grace period (~30 ms here) before returning; several closes in
    flight let a new close remove its breakpoints without waiting for the grace periods
    of the closes before it."""

    # Closes mostly wait out grace periods, which overlap: 821 links closed in 37 s one
    # after another, in 0.85 s with 128 at a time.
    WORKERS = 128

    def __init__(self):
        self._pool = concurrent.futures.ThreadPoolExecutor(self.WORKERS, thread_name_prefix="bpfcov-close")

    @staticmethod
    def _close(fd: int) -> None:
        try:
            os.close(fd)
        except OSError:
            pass

    def close_later(self, fd: int) -> None:
        self._pool.submit(self._close, fd)

    def finish(self) -> None:
        self._pool.shutdown(wait=True)


class Tracer:
    def __init__(self, program: CounterProgram, pid: int = 0, shard_size: int = DEFAULT_SHARD_SIZE,
                 on_loader_stop=None):
        self.program = program
        self.pid = pid
        # Count mode never replaces a link, so one link per object is cheapest.
        self.shard_size = min(shard_size, MAX_PROBES_PER_LINK) if program.hit_mode else MAX_PROBES_PER_LINK
        self.shards: list[Shard] = []
        self._shard_of = np.full(program.slots, -1, dtype=np.int32)
        self._lock = threading.Lock()  # guards shards' links against the relinker
        self._closer = _LinkCloser()
        self._stop = threading.Event()
        self._relinker: threading.Thread | None = None
        self._on_loader_stop = on_loader_stop
        self._loader_links: list[int] = []
        self.stats = TracerStats()

    # -- attaching ---------------------------------------------------------------------
    def add_object(self, path: str, offsets: np.ndarray, first_probe: int) -> None:
        """Attach probes at `offsets` of `path`, numbered from `first_probe` on."""
        offsets = np.asarray(offsets, dtype=np.uint64)
        probes = np.arange(first_probe, first_probe + len(offsets), dtype=np.uint64)
        new = []
        for start in range(0, len(offsets), self.shard_size):
            shard = Shard(path, offsets[start:start + self.shard_size], probes[start:start + self.shard_size])
            shard.remaining = len(shard.offsets)
            new.append(shard)
        with self._lock:
            try:
                for shard in new:
                    shard.link_fd = create_link(self.program.prog_fd, path, shard.offsets, shard.probes, self.pid)
                    self.stats.links_created += 1
            except LinkError:
                for shard in new:
                    if shard.link_fd is not None:
                        self._closer.close_later(shard.link_fd)
                raise
            for shard in new:
                self._shard_of[shard.probes.astype(np.int64)] = len(self.shards)
                self.shards.append(shard)

    def add_loader_hook(self, path: str, offset: int) -> None:
        """Stop each traced process at the loader's _dl_debug_state (see counter.c)."""
        fd = create_link(self.program.loader_prog_fd, path, np.array([offset], dtype=np.uint64),
                         np.zeros(1, dtype=np.uint64), self.pid)
        self._loader_links.append(fd)

    # -- events: first hits (hit mode) and loader stops ---------------------------------
    def start(self) -> None:
        if self.program.has_events and self._relinker is None:
            self._relinker = threading.Thread(target=self._relink_loop, name="bpfcov-relinker", daemon=True)
            self._relinker.start()

    def _relink_loop(self) -> None:
        while not self._stop.is_set():
            # The timeout bounds how long close() waits for this thread to notice.
            hits, stopped = self.program.wait_events(20)
            if stopped and self._on_loader_stop is not None:
                self._on_loader_stop(stopped)
            if not hits or self._stop.is_set():
                continue
            started = time.perf_counter()
            affected = set(self._shard_of[np.asarray(hits, dtype=np.int64)].tolist()) - {-1}
            with self._lock:
                if self._stop.is_set():
                    return
                counts = self.program.counts
                for s in sorted(affected):
                    self._narrow(self.shards[s], counts)
            self.stats.relinks += 1
            self.stats.relink_seconds += time.perf_counter() - started

    def _narrow(self, shard: Shard, counts: np.ndarray) -> None:
        """Replace the shard's link with one holding only its probes not yet hit."""
        if shard.link_fd is None:
            return
        # Read the counts now, not the reported indexes alone: probes hit since the report
        # are dropped in the same relink.
        unhit = counts[shard.probes.astype(np.int64)] == 0
        remaining = int(unhit.sum())
        if remaining == shard.remaining:
            return
        old = shard.link_fd
        if remaining:
            try:
                shard.link_fd = create_link(self.program.prog_fd, shard.path, shard.offsets[unhit],
                                            shard.probes[unhit], self.pid)
                self.stats.links_created += 1
            except LinkError as e:
                # Keep the old, wider link: it costs time, never data.
                self.stats.errors.append(str(e))
                return
        else:
            shard.link_fd = None
        shard.remaining = remaining
        self._closer.close_later(old)

    @property
    def probes_left(self) -> int:
        return sum(s.remaining for s in self.shards if s.link_fd is not None)

    # -- detaching ---------------------------------------------------------------------
    def close(self, wait: bool = True) -> None:
        """Detach everything; with `wait`, return only when every link is closed (else
        call wait_closed later). The loader hook is always gone on return: a process it
        stopped after that could wait forever for a SIGCONT."""
        self._stop.set()
        if self._relinker is not None:
            self._relinker.join()
            self._relinker = None
        with self._lock:
            for fd in self._loader_links:
                os.close(fd)
            self._loader_links = []
            for shard in self.shards:
                if shard.link_fd is not None:
                    self._closer.close_later(shard.link_fd)
                    shard.link_fd = None
        if wait:
            self.wait_closed()

    def wait_closed(self) -> None:
        self._closer.finish()
