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
  (~1 µs). A probe is taken out by replacing its link with one that leaves it out (new
  link first, so that no other probe has a gap; with perf events, by closing the probe's
  own link). That costs the traced process more than a few traps: each probe the new
  link keeps takes the process's mmap lock, and while the process runs and traps, that
  lock is contended and a 16-probe link takes milliseconds instead of 60 µs. So:
  - a probe hit fewer than HOT_HITS times stays (program.py);
  - at its HOT_HITS-th hit the BPF program stops the process and reports the probe; this
    thread replaces the links of every shard holding a hot probe, hottest first, while
    the process waits, uncontended, and then lets it go on;
  - probes that have told all they can (answered.py) are taken out in the background,
    before they get hot, one shard at a time between reads of the ring;
  - shards are small (64 probes), so a replacement keeps few probes.
  Closing the old link removes its breakpoints and then waits for an RCU grace period
  (~30-60 ms), so closes run on other threads.

The kernel has the last word on which instructions it probes. When it refuses a link
(ENOTSUPP and kin), the refused probes are found by bisecting the shard, and each one is
moved to its next instruction or dropped, as `on_refused` decides; the rest attach.
"""

from __future__ import annotations

import concurrent.futures
import errno
import heapq
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from bpfcov.engine.program import HOT_HITS, CounterProgram
from bpfcov.engine.uprobe_multi import ENOTSUPP, LinkError

# Probes per link in hit mode (the fewest; see session.hit_shard_size). Replacing a link
# costs about 4 µs per probe it keeps with the process stopped, many times more with it
# running and trapping; but more links mean more replacements for the probes that have
# told all they can. Measured on the sqlite workload at N=200,000 (5 interleaved runs):
# hit mode ran the program 3.1x untraced with 64, 3.8x with 128, 4.4x with 16, 6.8x with 8.
DEFAULT_SHARD_SIZE = 64

# Errors with which the kernel refuses a probe's instruction (or, for EINVAL, its offset).
REFUSALS = frozenset({ENOTSUPP, errno.ENOEXEC, errno.EINVAL})

# How urgently a shard is narrowed: it holds a hot probe, or only probes that have told
# all they can (answered.py), which cost nothing until they are hit.
_HOT, _ANSWERED = 0, 1

# How often the ring's lost records are looked for (a map read: a syscall).
LOSS_CHECK_SECONDS = 0.1

# on_refused(probe, offset) -> the offset to try instead, or None to drop the probe.
RefusalHandler = Callable[[int, int], "int | None"]


@dataclass
class Shard:
    path: str              # the path the kernel opens for this object
    offsets: np.ndarray    # file offsets, uint64; a refused probe may move to its next instruction
    probes: np.ndarray     # global probe numbers (cookies), uint64
    live: np.ndarray       # bool; False for a probe the kernel refused and that could not move
    links: dict[int, Link] = field(default_factory=dict)  # pid -> its link on this shard


class Link(NamedTuple):
    fd: int
    held: np.ndarray  # indexes into the shard of the probes it holds


@dataclass
class TracerStats:
    relinks: int = 0
    relink_seconds: float = 0.0
    links_created: int = 0
    refused: int = 0       # probes the kernel refused although predicted fine
    processes: int = 0     # processes given links
    errors: list[str] = field(default_factory=list)


class _LinkCloser:
    """Closes link fds in the background, `workers` at a time, in the order given, and
    notes when each close that removes probes already hit began: their breakpoints leave
    the process at once then (the close's wait comes after).

    A uprobe_multi link removes its breakpoints at once and then waits out an RCU grace
    period (~30 ms here): closes in flight overlap their waits (821 links closed in 37 s
    one after another, in 0.85 s with 128 at a time). A perf-event link is released
    under the kernel's global event_mutex, with three or four grace periods inside it
    (perf_uprobe_destroy on 6.18): 30-100 ms each, one at a time whatever the threads. There
    more workers only blur the order, and the order matters: hottest probes first."""

    def __init__(self, workers: int):
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="bpfcov-close")
        self.removals: list[tuple[int, np.ndarray]] = []  # (CLOCK_MONOTONIC ns, probes removed)

    def _close(self, fd: int, removes: np.ndarray | None) -> None:
        if removes is not None:
            self.removals.append((time.monotonic_ns(), removes))  # list.append: atomic
        try:
            os.close(fd)
        except OSError:
            pass

    def close_later(self, fd: int, removes: np.ndarray | None = None) -> None:
        """Close `fd`; `removes`: the probes (global numbers) hit so far whose breakpoints
        this close takes out of its process."""
        self._pool.submit(self._close, fd, removes)

    def finish(self) -> None:
        self._pool.shutdown(wait=True)


class Tracer:
    def __init__(self, program: CounterProgram, shard_size: int = DEFAULT_SHARD_SIZE,
                 on_process_events: Callable[[list[tuple[int, int]]], None] | None = None,
                 on_refused: RefusalHandler | None = None,
                 on_first_hits: Callable[[list[int]], np.ndarray] | None = None):
        """`on_refused`: see RefusalHandler. `on_first_hits(probes)`: told of probes hit for
        the first time, returns the probes no longer needed (hit mode)."""
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
        self._lost_seen = 0  # hit events the ring had no room for, as last seen
        self._on_first_hits = on_first_hits
        self.needed = np.ones(program.slots, dtype=bool)  # False: told all it can, link it no more
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
                    self._closer.close_later(link.fd)
            fd = self._loader_links.pop(pid, None)
            if fd is not None:
                self._closer.close_later(fd)

    def _wanted(self, shard: Shard) -> np.ndarray:
        """Indexes of the shard's probes a new link should hold."""
        want = shard.live & self.needed[shard.probes.astype(np.int64)]
        if self.program.hit_mode:
            want = want & (self.program.counts[shard.probes.astype(np.int64)] == 0)
        return np.flatnonzero(want)

    def _link(self, pid: int, shard: Shard) -> Link | None:
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
            return Link(fd, wanted)

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
        # Shards to narrow, as (urgency, -traps so far, shard): first those holding hot
        # probes, hottest first, while their processes wait stopped (counter.c); then, one
        # at a time and reading the ring again between two, those holding probes that have
        # told all they can.
        queue: list[tuple[int, int, int]] = []
        queued: dict[int, int] = {}  # shard -> its urgency in the queue
        first_hits: list[int] = []   # not yet told to on_first_hits
        stopped: list[int] = []      # processes stopped at a hot hit, to continue
        next_loss_check = 0.0
        try:
            while not self._stop.is_set():
                # The timeout bounds how long close() waits for this thread to notice.
                reports = self.program.wait_events(0 if queue or first_hits else 20)
                stopped += reports.stopped
                if reports.processes and self._on_process_events is not None:
                    self._on_process_events(reports.processes)
                hot = reports.hot
                if self.program.hit_mode and time.monotonic() >= next_loss_check:
                    next_loss_check = time.monotonic() + LOSS_CHECK_SECONDS
                    lost = self.program.lost_events()
                    if lost > self._lost_seen:
                        # Some reports found the ring full: every probe hit often enough is hot.
                        self._lost_seen = lost
                        hot = np.flatnonzero(self.program.counts >= HOT_HITS).tolist()
                self._enqueue(queue, queued, hot, _HOT)
                first_hits += reports.first_hits
                with self._lock:
                    while queue and queue[0][0] == _HOT and not self._stop.is_set():
                        self._narrow_next(queue, queued)
                # Every hot probe is out: the processes stopped at their hits go on.
                self._continue(stopped)
                stopped = []
                if first_hits and self._on_first_hits is not None:
                    answered = self._on_first_hits(first_hits)
                    self.needed[answered] = False
                    self._enqueue(queue, queued, answered, _ANSWERED)
                first_hits = []
                if queue:
                    with self._lock:
                        if not self._stop.is_set():
                            self._narrow_next(queue, queued)
        finally:
            self._continue(stopped)  # never leave a process stopped

    def _narrow_next(self, queue: list[tuple[int, int, int]], queued: dict[int, int]) -> None:
        urgency, _, s = heapq.heappop(queue)
        if queued.get(s) != urgency:
            return  # queued again since, more urgently
        del queued[s]
        started = time.perf_counter()
        self._narrow(self.shards[s])
        self.stats.relinks += 1
        self.stats.relink_seconds += time.perf_counter() - started

    def _continue(self, pids) -> None:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass

    def _enqueue(self, queue: list[tuple[int, int, int]], queued: dict[int, int], probes, urgency: int) -> None:
        if not len(probes):
            return
        for s in set(self._shard_of[np.asarray(probes, dtype=np.int64)].tolist()) - {-1}:
            if queued.get(s, _ANSWERED + 1) > urgency:
                # Answered probes cost nothing until hit: their shards need no ranking.
                heapq.heappush(queue, (urgency, -self._traps_held(s) if urgency == _HOT else 0, s))
                queued[s] = urgency

    def _traps_held(self, shard_index: int) -> int:
        """Hits so far of the probes a link of the shard still holds although they were
        hit: each costs a trap again until the link is replaced."""
        shard = self.shards[shard_index]
        link = next(iter(shard.links.values()), None)
        if link is None:
            return 0
        counts = self.program.counts[shard.probes[link.held].astype(np.int64)]
        return int(counts[counts > 0].sum())

    def _narrow(self, shard: Shard) -> None:
        """Replace each of the shard's links with one holding only the probes still wanted:
        not yet hit, and with something left to tell."""
        # The counts are read now, not the reported probes alone: probes hit since the
        # report are dropped in the same relink.
        wanted = self._wanted(shard)
        for pid, (old, held) in list(shard.links.items()):
            if len(wanted) == len(held):
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
                    shard.links[pid] = Link(fd, wanted)
            else:
                del shard.links[pid]
            self._closer.close_later(old, shard.probes[np.setdiff1d(held, wanted, assume_unique=True)])

    @property
    def probes_left(self) -> int:
        """Probes still attached to some process."""
        return sum(max(len(link.held) for link in s.links.values()) for s in self.shards if s.links)

    def removal_stats(self, counts: np.ndarray) -> dict:
        """What hit mode's probes cost after their first hit: the time from a probe's
        first hit, and from its report as hot, to the start of the close that took its
        breakpoint out of a process (p50, p99, max in ms, over every such removal), and the
        traps each probe hit took after its first."""
        since_first, since_hot = [np.zeros(0)], [np.zeros(0)]
        for t, probes in self._closer.removals:
            for moments, into in ((self.program.first_hit_ns, since_first), (self.program.hot_ns, since_hot)):
                ns = moments[probes.astype(np.int64)]
                into.append((t - ns[ns > 0]) / 1e6)  # 0: not reported (yet)
        first, hot = np.concatenate(since_first), np.concatenate(since_hot)
        hit = counts[counts > 0].astype(np.int64) - 1
        return {"removals": len(first), **_spread("removal_ms", first, 3), **_spread("hot_removal_ms", hot, 3),
                "traps_after_first_hit": int(hit.sum()), **_spread("traps_after_first_hit", hit, 0)}

    # -- detaching ---------------------------------------------------------------------
    def close(self, wait: bool = True) -> None:
        """Detach everything; with `wait`, return only when every link is closed (else
        call wait_closed later). The loader hooks are always gone on return: a process one
        stopped after that could wait forever for a SIGCONT."""
        self._stop.set()
        if self._relinker is not None:
            self._relinker.join()
            self._relinker = None
        # Processes stopped for user space and not yet heard of go on, links or not.
        last = self.program.forbid_stops()
        self._continue([*last.stopped, *(pid for _, pid in last.processes)])
        with self._lock:
            for fd in self._loader_links.values():
                os.close(fd)
            self._loader_links = {}
            for shard in self.shards:
                for link in shard.links.values():
                    self._closer.close_later(link.fd)
                shard.links = {}
        if wait:
            self.wait_closed()

    def wait_closed(self) -> None:
        self._closer.finish()


def _spread(name: str, values: np.ndarray, digits: int) -> dict:
    """{name_p50, name_p99, name_max} of `values` (0 when there are none)."""
    if not len(values):
        return {f"{name}_p50": 0, f"{name}_p99": 0, f"{name}_max": 0}
    p50, p99 = np.percentile(values, [50, 99])
    return {f"{name}_p50": round(float(p50), digits), f"{name}_p99": round(float(p99), digits),
            f"{name}_max": round(float(values.max()), digits)}
