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

# Probes per link. Replacing a link costs about 7 µs per probe it keeps while the target
# runs (each probe takes the target's mmap lock), and every hot probe traps until the
# replacement is done, so links are small; measured on the sqlite workload with --lines
# (52,000 probes), 1,024 per link with closes in parallel ran 1.5x faster than 16,384.
DEFAULT_SHARD_SIZE = 1024


@dataclass
class Shard:
    path: str
    offsets: np.ndarray    # file offsets, uint64
    probes: np.ndarray     # global probe numbers (cookies), uint64
    link_fd: int | None = None
    remaining: int = 0
    # An old link of this shard is waiting to be closed. Until it is, its probes still
    # trap, so replacing the link again would only queue more closes behind it: the
    # shard is marked `dirty` instead and narrowed as soon as the close is done.
    closing: bool = False
    dirty: bool = False


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
    of the closes before it. `done` runs after each close."""

    WORKERS = 32

    def __init__(self):
        self._pool = concurrent.futures.ThreadPoolExecutor(self.WORKERS, thread_name_prefix="bpfcov-close")

    @staticmethod
    def _close(fd: int, done) -> None:
        try:
            os.close(fd)
        except OSError:
            pass
        if done is not None:
            done()

    def close_later(self, fd: int, done=None) -> None:
        self._pool.submit(self._close, fd, done)

    def start(self) -> None:
        pass

    def finish(self) -> None:
        self._pool.shutdown(wait=True)


class Tracer:
    def __init__(self, program: CounterProgram, pid: int = 0, shard_size: int = DEFAULT_SHARD_SIZE,
                 on_loader_stop=None):
        self.program = program
        self.pid = pid
        self.shard_size = min(shard_size, MAX_PROBES_PER_LINK)
        self.shards: list[Shard] = []
        self._shard_of = np.full(program.slots, -1, dtype=np.int32)
        self._lock = threading.Lock()  # guards shards' links against the relinker
        self._closer = _LinkCloser()
        self._closer.start()
        self._stop = threading.Event()
        self._dirty = threading.Event()  # some shard awaits narrowing after its close
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
            # Poll briefly while some shard waits for its close, so it is narrowed promptly.
            # The idle timeout bounds how long close() waits for this thread to notice.
            hits, stopped = self.program.wait_events(2 if self._dirty.is_set() else 20)
            if stopped and self._on_loader_stop is not None:
                self._on_loader_stop(stopped)
            if self._stop.is_set():
                return
            if not hits and not self._dirty.is_set():
                continue
            started = time.perf_counter()
            self._dirty.clear()
            affected = set(self._shard_of[np.asarray(hits, dtype=np.int64)].tolist()) - {-1}
            with self._lock:
                if self._stop.is_set():
                    return
                counts = self.program.counts
                for s, shard in enumerate(self.shards):
                    if s in affected or (shard.dirty and not shard.closing):
                        self._narrow(shard, counts)
            self.stats.relinks += 1
            self.stats.relink_seconds += time.perf_counter() - started

    def _narrow(self, shard: Shard, counts: np.ndarray) -> None:
        """Replace the shard's link with one holding only its probes not yet hit."""
        if shard.link_fd is None:
            return
        if shard.closing:
            shard.dirty = True
            return
        shard.dirty = False
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
        shard.closing = True
        self._closer.close_later(old, lambda: self._closed(shard))

    def _closed(self, shard: Shard) -> None:
        shard.closing = False
        if shard.dirty:
            self._dirty.set()

    @property
    def probes_left(self) -> int:
        return sum(s.remaining for s in self.shards if s.link_fd is not None)

    # -- detaching ---------------------------------------------------------------------
    def close(self) -> None:
        """Detach everything and wait until every link is closed."""
        self._stop.set()
        if self._relinker is not None:
            self._relinker.join()
            self._relinker = None
        with self._lock:
            for fd in self._loader_links:
                self._closer.close_later(fd)
            self._loader_links = []
            for shard in self.shards:
                if shard.link_fd is not None:
                    self._closer.close_later(shard.link_fd)
                    shard.link_fd = None
        self._closer.finish()
