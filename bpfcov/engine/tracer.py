"""Keeping probes attached: the links of every traced process, in count or hit mode.

Probes are numbered globally (a probe's number is its cookie and its slot in `counts`)
and cut into shards: runs of one object's probes. Each traced process gets one link per
shard, carrying its pid, so that the kernel puts breakpoints in that process alone: a
process outside the trace, bpfcov's own included, never traps on them (a link without a
pid would put its int3s into every process on the host that maps the file). `watch`,
which covers every process by design, uses pid 0. A link is a uprobe_multi link, or with
the perf-event method (attach.py) a single probe's perf event, and then a shard is one
probe: everything below holds for both.

- count mode: every shard is linked once per process and left alone.
- hit mode: a probe that has fired is of no more use, and each further hit costs a trap
  (~1 µs). The BPF program reports a probe's first hit through a ring buffer; a thread
  here wakes on it and replaces each affected link with one that leaves out every probe
  already hit, new link first so that no probe has a gap (with perf events, it closes
  the probe's own link). Closing the old link removes its breakpoints and then waits for
  an RCU grace period (~30 ms), so closes run on other threads, off the path between a
  first hit and the new link; the busiest shards are narrowed first.

The kernel has the last word on which instructions it probes. When it refuses a link
(ENOTSUPP and kin), the refused probes are found by bisecting the shard, and each one is
moved to its next instruction or dropped, as `on_refused` decides; the rest attach.
"""

from __future__ import annotations

import concurrent.futures
import errno
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from bpfcov.engine.program import CounterProgram
from bpfcov.engine.uprobe_multi import ENOTSUPP, LinkError

# Probes per link. While a link is replaced, its hot probes keep trapping, and replacing
# costs about 7 µs per probe it keeps while the target runs (each takes the target's mmap
# lock): small links narrow fastest. Measured on the sqlite workload (bench/): with --lines
# (52,000 probes) at N=200,000, 128 probes per link ran the program 2.7x untraced against
# 3.7x with 1,024; functions alone, 0.98x against 1.09x at N=2,000,000.
DEFAULT_SHARD_SIZE = 128

# Errors with which the kernel refuses a probe's instruction (or, for EINVAL, its offset).
REFUSALS = frozenset({ENOTSUPP, errno.ENOEXEC, errno.EINVAL})

# on_refused(probe, offset) -> the offset to try instead, or None to drop the probe.
RefusalHandler = Callable[[int, int], "int | None"]


@dataclass
class Shard:
    path: str              # the path the kernel opens for this object
    offsets: np.ndarray    # file offsets, uint64; a refused probe may move to its next instruction
    probes: np.ndarray     # global probe numbers (cookies), uint64
    live: np.ndarray       # bool; False for a probe the kernel refused and that could not move
    links: dict[int, tuple[int, int]] = field(default_factory=dict)  # pid -> (link fd, probes in it)


@dataclass
class TracerStats:
    relinks: int = 0
    relink_seconds: float = 0.0
    links_created: int = 0
    refused: int = 0       # probes the kernel refused although predicted fine
    processes: int = 0     # processes given links
    errors: list[str] = field(default_factory=list)


class _LinkCloser:
    """Closes link fds in the background, `workers` at a time, in the order given.

    A uprobe_multi link removes its breakpoints at once and then waits out an RCU grace
    period (~30 ms here): closes in flight overlap their waits (821 links closed in 37 s
    one after another, in 0.85 s with 128 at a time). A perf-event link is released
    under the kernel's global event_mutex, with three or four grace periods inside it
    (perf_uprobe_destroy on 6.18): 30-100 ms each, one at a time whatever the threads. There
    more workers only blur the order, and the order matters: hottest probes first."""

    def __init__(self, workers: int):
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="bpfcov-close")

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
    def __init__(self, program: CounterProgram, shard_size: int = DEFAULT_SHARD_SIZE,
                 on_process_events: Callable[[list[tuple[int, int]]], None] | None = None,
                 on_refused: RefusalHandler | None = None):
        self.program = program
        self._create_link = program.method.create_link
        # Count mode never replaces a link, so one link per object and process is cheapest.
        most = program.method.max_probes_per_link
        self.shard_size = min(shard_size, most) if program.hit_mode else most
        self.shards: list[Shard] = []
        self._object_shards: dict[object, list[int]] = {}
        self._shard_of = np.full(program.slots, -1, dtype=np.int32)
        self._lock = threading.Lock()  # guards the shards' links against the relinker
        self._closer = _LinkCloser(program.method.closes_at_once)
        self._stop = threading.Event()
        self._relinker: threading.Thread | None = None
        self._on_process_events = on_process_events
        self._on_refused = on_refused
        self._loader_links: dict[int, int] = {}  # pid -> the loader hook's link
        self._processes: set[int] = set()
        self.stats = TracerStats()

    # -- objects and processes ---------------------------------------------------------
    def add_object(self, key, path: str, offsets: np.ndarray, first_probe: int) -> None:
        """Know the probes at `offsets` of the object `key`, opened by the kernel at `path`
        and numbered from `first_probe` on. Nothing is attached until attach()."""
        offsets = np.asarray(offsets, dtype=np.uint64)
        probes = np.arange(first_probe, first_probe + len(offsets), dtype=np.uint64)
        with self._lock:
            indexes = self._object_shards.setdefault(key, [])
            for start in range(0, len(offsets), self.shard_size):
                chunk = slice(start, start + self.shard_size)
                shard = Shard(path, offsets[chunk].copy(), probes[chunk],
                              np.ones(len(probes[chunk]), dtype=bool))
                self._shard_of[shard.probes.astype(np.int64)] = len(self.shards)
                indexes.append(len(self.shards))
                self.shards.append(shard)

    def attach(self, pid: int, key) -> bool:
        """Give process `pid` (0: every process) links on the object `key`'s probes not yet
        hit. False when the process has gone."""
        with self._lock:
            if pid not in self._processes:
                self._processes.add(pid)
                self.stats.processes += 1
            for s in self._object_shards.get(key, ()):
                shard = self.shards[s]
                if pid in shard.links:
                    continue
                try:
                    link = self._link(pid, shard)
                except LinkError as e:
                    if e.errno == errno.ESRCH:
                        return False
                    raise
                if link is not None:
                    shard.links[pid] = link
        return True

    def add_loader_hook(self, pid: int, path: str, offset: int) -> None:
        """Stop process `pid` at the loader's _dl_debug_state (see counter.c)."""
        with self._lock:
            if pid in self._loader_links:
                return
            loader_prog_fd = self.program.loader_prog_fd
            if loader_prog_fd is None:
                raise ValueError("the program was built without the loader hook")
            try:
                self._loader_links[pid] = self._create_link(loader_prog_fd, path,
                                                      np.array([offset], dtype=np.uint64),
                                                      np.zeros(1, dtype=np.uint64), pid)
            except LinkError as e:
                if e.errno != errno.ESRCH:
                    raise

    def detach(self, pid: int) -> None:
        """Close every link of a process that has exited."""
        with self._lock:
            self._processes.discard(pid)
            for shard in self.shards:
                link = shard.links.pop(pid, None)
                if link is not None:
                    self._closer.close_later(link[0])
            fd = self._loader_links.pop(pid, None)
            if fd is not None:
                self._closer.close_later(fd)

    def _wanted(self, shard: Shard) -> np.ndarray:
        """Indexes of the shard's probes a new link should hold."""
        want = shard.live
        if self.program.hit_mode:
            want = want & (self.program.counts[shard.probes.astype(np.int64)] == 0)
        return np.flatnonzero(want)

    def _link(self, pid: int, shard: Shard) -> tuple[int, int] | None:
        """A link for `pid` on the shard's wanted probes, moving or dropping any the kernel
        refuses; None when no probe is left to link."""
        while True:
            wanted = self._wanted(shard)
            if not len(wanted):
                return None
            try:
                fd = self._create_link(self.program.prog_fd, shard.path, shard.offsets[wanted], shard.probes[wanted],
                                       pid)
            except LinkError as e:
                if e.errno not in REFUSALS:
                    raise
                refused = self._refused_among(pid, shard, wanted)
                if not refused:
                    raise  # the whole is refused but no single probe is: nothing to bisect
                for i in refused:
                    self.stats.refused += 1
                    moved = self._on_refused(int(shard.probes[i]), int(shard.offsets[i])) if self._on_refused else None
                    if moved is None:
                        shard.live[i] = False
                    else:
                        shard.offsets[i] = moved
                continue
            self.stats.links_created += 1
            return fd, len(wanted)

    def _refused_among(self, pid: int, shard: Shard, indexes: np.ndarray) -> list[int]:
        """The probes among `indexes` (already refused together) that the kernel refuses
        alone, by bisection: about 2·log2(n) link attempts per refused probe."""
        if len(indexes) == 1:
            return [int(indexes[0])]
        half = len(indexes) // 2
        refused = []
        for part in (indexes[:half], indexes[half:]):
            try:
                fd = self._create_link(self.program.prog_fd, shard.path, shard.offsets[part], shard.probes[part], pid)
            except LinkError as e:
                if e.errno not in REFUSALS:
                    raise
                refused += self._refused_among(pid, shard, part)
            else:
                self._closer.close_later(fd)
        return refused

    # -- events: first hits (hit mode) and stopped processes -----------------------------
    def start(self) -> None:
        if self.program.has_events and self._relinker is None:
            self._relinker = threading.Thread(target=self._event_loop, name="bpfcov-relinker", daemon=True)
            self._relinker.start()

    def _event_loop(self) -> None:
        while not self._stop.is_set():
            # The timeout bounds how long close() waits for this thread to notice.
            hits, events = self.program.wait_events(20)
            if events and self._on_process_events is not None:
                self._on_process_events(events)
            if not hits or self._stop.is_set():
                continue
            started = time.perf_counter()
            affected = set(self._shard_of[np.asarray(hits, dtype=np.int64)].tolist()) - {-1}
            with self._lock:
                if self._stop.is_set():
                    return
                # The busiest first: each of their hits until the new link costs a trap.
                for s in sorted(affected, key=self._hits_in, reverse=True):
                    self._narrow(self.shards[s])
            self.stats.relinks += 1
            self.stats.relink_seconds += time.perf_counter() - started

    def _hits_in(self, shard_index: int) -> int:
        return int(self.program.counts[self.shards[shard_index].probes.astype(np.int64)].sum())

    def _narrow(self, shard: Shard) -> None:
        """Replace each of the shard's links with one holding only its probes not yet hit."""
        # The counts are read now, not the reported probes alone: probes hit since the
        # report are dropped in the same relink.
        wanted = self._wanted(shard)
        for pid, (old, held) in list(shard.links.items()):
            if len(wanted) == held:
                continue
            if len(wanted):
                try:
                    fd = self._create_link(self.program.prog_fd, shard.path, shard.offsets[wanted],
                                     shard.probes[wanted], pid)
                except LinkError as e:
                    if e.errno != errno.ESRCH:
                        # Keep the old, wider link: it costs time, never data.
                        self.stats.errors.append(str(e))
                        continue
                    del shard.links[pid]  # the process has gone
                else:
                    self.stats.links_created += 1
                    shard.links[pid] = (fd, len(wanted))
            else:
                del shard.links[pid]
            self._closer.close_later(old)

    @property
    def probes_left(self) -> int:
        """Probes still attached to some process."""
        return sum(max(held for _, held in s.links.values()) for s in self.shards if s.links)

    # -- detaching ---------------------------------------------------------------------
    def close(self, wait: bool = True) -> None:
        """Detach everything; with `wait`, return only when every link is closed (else
        call wait_closed later). The loader hooks are always gone on return: a process one
        stopped after that could wait forever for a SIGCONT."""
        self._stop.set()
        if self._relinker is not None:
            self._relinker.join()
            self._relinker = None
        with self._lock:
            for fd in self._loader_links.values():
                os.close(fd)
            self._loader_links = {}
            for shard in self.shards:
                for fd, _ in shard.links.values():
                    self._closer.close_later(fd)
                shard.links = {}
        if wait:
            self.wait_closed()

    def wait_closed(self) -> None:
        self._closer.finish()
