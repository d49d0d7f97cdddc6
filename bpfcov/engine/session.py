"""A tracing session: index the objects, load the program, attach, wait, collect.

The three ways of choosing what is traced differ only in how the session starts and
when it ends (see targets.py); everything here is shared by them:

    session = Session(options, command, pid_filter, cgroup_id)
    session.add_object(path)      # any number, before or after start()
    session.start()
    ... session.snapshot() ...    # periodic, for --interval
    run = session.finish()        # detaches everything; always call, even on error
"""

from __future__ import annotations

import os
import resource
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from bpfcov import __version__
from bpfcov.data.model import ObjectCoverage, RunCoverage
from bpfcov.engine.plan import ObjectPlan, plan_object
from bpfcov.engine.program import CounterProgram, ProgramBuilder
from bpfcov.engine.tracer import DEFAULT_SHARD_SIZE, Tracer
from bpfcov.errors import BpfcovError
from bpfcov.probes.index import index_object
from bpfcov.probes.model import ObjectIndex, name_filter


@dataclass
class TraceOptions:
    mode: str = "hit"
    lines: bool = False
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    debug_dirs: tuple[str, ...] = ()
    quiet: bool = False
    shard_size: int = DEFAULT_SHARD_SIZE
    # Slots kept free for objects that appear during the run (dlopen, --libs).
    spare_slots: int = 0
    ends_by_itself: bool = True  # False for watch and attach, which say how to end them


def _filtered(index: ObjectIndex, wanted) -> ObjectIndex:
    """The index without the functions --include/--exclude leave out (and their lines)."""
    keep = [i for i, f in enumerate(index.functions) if wanted(f.name, f.display_name)]
    if len(keep) == len(index.functions):
        return index
    functions = [index.functions[i] for i in keep]
    lines = index.lines
    if lines is not None and len(lines):
        renumber = np.full(len(index.functions), -1, dtype=np.int32)
        renumber[keep] = np.arange(len(keep), dtype=np.int32)
        new_owner = renumber[lines.function]
        rows = new_owner >= 0
        lines = type(lines)(lines.files, lines.address[rows], lines.offset[rows], lines.file[rows],
                            lines.line[rows], new_owner[rows])
    return ObjectIndex(index.path, index.build_id, functions, lines, index.warnings, index.debug_file)


def say(options: TraceOptions, message: str) -> None:
    if not options.quiet:
        print(f"bpfcov: {message}", file=sys.stderr, flush=True)


class Session:
    def __init__(self, options: TraceOptions, command: list[str], pid_filter: int = 0,
                 cgroup_id: int | None = None, loader: str | None = None, builder: ProgramBuilder | None = None):
        """`loader`: the dynamic loader's path, to catch dlopen() at once (for --libs).
        `builder`: a compile the command started early (commands/tracing.py); else one
        starts now."""
        self.options = options
        self.loader = loader
        # Set when there is something for the waiting thread to do: a stop request or a
        # process the loader hook stopped.
        self.wake = threading.Event()
        self._stopped_pids: list[int] = []
        self._stopped_lock = threading.Lock()
        self.command = command
        self.pid_filter = pid_filter
        self.cgroup_id = cgroup_id
        self.plans: list[ObjectPlan] = []
        self._pending: list[ObjectIndex] = []
        self._paths: set[str] = set()
        self._wanted = name_filter(options.include, options.exclude) \
            if options.include or options.exclude else None
        self.program: CounterProgram | None = None
        self.tracer: Tracer | None = None
        self._builder = builder or ProgramBuilder(options.mode == "hit", cgroup_id is not None, loader is not None,
                                                  slots_guess=ProgramBuilder.GUESS + options.spare_slots)
        self.started = time.time()
        self.ended: float | None = None
        self.warnings: list[str] = []
        self._probes_left: int | None = None  # probes still attached when tracing stopped

    # -- objects -----------------------------------------------------------------------
    def index(self, path: str) -> ObjectIndex | None:
        """Index an object once; later calls with the same file return None."""
        real = os.path.realpath(path)
        if real in self._paths:
            return None
        self._paths.add(real)
        index = index_object(real, lines=self.options.lines, debug_dirs=self.options.debug_dirs,
                             quiet=self.options.quiet)
        for w in index.warnings:
            say(self.options, f"warning: {w}")
        if self._wanted is not None:
            index = _filtered(index, self._wanted)
        return index

    def add_object(self, path: str, required: bool = True) -> None:
        """Probe the object at `path`: now if tracing has begun, else at start().

        An object that is not `required` and cannot be indexed or attached is skipped with
        a warning."""
        try:
            index = self.index(path)
            if index is None:
                return
            if self.tracer is None:
                self._pending.append(index)
            else:
                self._attach(index)
        except BpfcovError as e:
            if required:
                raise
            say(self.options, f"warning: not tracing {path}: {e}")

    def _next_probe(self) -> int:
        return self.plans[-1].first_probe + self.plans[-1].probe_count if self.plans else 0

    def _attach(self, index: ObjectIndex) -> None:
        self._attach_plan(plan_object(index, self._next_probe()))

    def _attach_plan(self, plan: ObjectPlan) -> None:
        index = plan.index
        if plan.first_probe + plan.probe_count > self.program.slots:
            message = f"warning: no probe slots left for {index.path}; it is not traced"
            self.warnings.append(message)
            say(self.options, message)
            return
        if plan.probe_count:
            self.tracer.add_object(index.path, plan.offsets, plan.first_probe)
        self.plans.append(plan)

    # -- life cycle --------------------------------------------------------------------
    def start(self) -> None:
        """Load the BPF program and attach every pending object."""
        # Number every pending object's probes once: their total sizes the program.
        plans, first_probe = [], 0
        for index in self._pending:
            plans.append(plan_object(index, first_probe))
            first_probe += plans[-1].probe_count
        self._pending = []
        self.program = self._builder.get(first_probe + self.options.spare_slots)
        if self.cgroup_id is not None:
            self.program.filter_cgroup(self.cgroup_id)
        self.tracer = Tracer(self.program, self.pid_filter, self.options.shard_size,
                             on_loader_stop=self._loader_stopped)
        for plan in plans:
            self._attach_plan(plan)
        if self.loader is not None:
            self._hook_loader(self.loader)
        self.tracer.start()
        functions = sum(int((p.function_probe >= 0).sum()) for p in self.plans)
        lines = sum(len(p.index.lines) for p in self.plans if p.index.lines is not None)
        what = f"{functions:,} functions" + (f" and {lines:,} lines" if self.options.lines else "")
        n = len(self.plans)
        end = "" if self.options.ends_by_itself else " Ctrl-C to end."
        say(self.options, f"Tracing {what} in {n} object{'s' if n != 1 else ''} ({self.options.mode} mode)...{end}")
        self.started = time.time()

    # -- dlopen: the loader hook -------------------------------------------------------
    def _hook_loader(self, loader: str) -> None:
        index = index_object(loader, quiet=True)
        hook = next((f for f in index.functions
                     if "_dl_debug_state" in (f.name.split("@")[0], *(a.split("@")[0] for a in f.aliases))), None)
        if hook is None or hook.probe_offset is None:
            say(self.options, f"warning: {loader} has no _dl_debug_state; libraries opened with dlopen() "
                              "are found by polling, and their first calls may be missed")
            return
        self.tracer.add_loader_hook(os.path.realpath(loader), hook.probe_offset)

    def _loader_stopped(self, pids: list[int]) -> None:
        """Called from the event thread: these processes are stopped inside the loader."""
        with self._stopped_lock:
            self._stopped_pids.extend(pids)
        self.wake.set()

    def take_stopped(self) -> list[int]:
        with self._stopped_lock:
            pids, self._stopped_pids = self._stopped_pids, []
        return pids

    @staticmethod
    def resume(pids: list[int]) -> None:
        for pid in set(pids):
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass

    def coverage(self, counts: np.ndarray, complete: bool) -> RunCoverage:
        objects = []
        for plan in self.plans:
            fp = plan.function_probe
            fcounts = np.where(fp >= 0, counts[np.maximum(fp, 0)].astype(np.int64), 0)
            lcounts = None
            if plan.line_probe is not None:
                lp = plan.line_probe
                lcounts = np.where(lp >= 0, counts[np.maximum(lp, 0)].astype(np.int64), 0) if len(lp) \
                    else np.zeros(0, dtype=np.int64)
            objects.append(ObjectCoverage(plan.index, fcounts, lcounts))
        return RunCoverage(
            mode=self.options.mode, command=list(self.command), started=self.started,
            ended=self.ended if complete else time.time(), host=socket.gethostname(),
            kernel=os.uname().release, lines=self.options.lines, objects=objects,
            complete=complete, bpfcov_version=__version__, stats=self.stats())

    def stats(self) -> dict:
        tracer = self.tracer.stats if self.tracer is not None else None
        return {
            "probes": sum(p.probe_count for p in self.plans),
            "relinks": tracer.relinks if tracer else 0,
            "relink_seconds": round(tracer.relink_seconds, 4) if tracer else 0.0,
            "links_created": tracer.links_created if tracer else 0,
            "probes_left": self._probes_left if self._probes_left is not None else
            (self.tracer.probes_left if self.tracer else 0),
            "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        }

    def snapshot(self) -> RunCoverage:
        """The counts so far, for a periodic snapshot; tracing goes on."""
        if self.program is None:
            raise BpfcovError("tracing has not started")
        return self.coverage(self.program.snapshot(), complete=False)

    def finish(self) -> RunCoverage | None:
        """Stop tracing and return the final counts. The links close in the background
        (each waits out a grace period; hundreds of them take a while) while the caller
        writes its reports; wait_for_release() waits until every kernel object is gone."""
        self.ended = time.time()
        counts = None
        try:
            if self.tracer is not None:
                self._probes_left = self.tracer.probes_left
                self.tracer.close(wait=False)
                for e in self.tracer.stats.errors[:3]:
                    say(self.options, f"warning: {e}")
        finally:
            self.resume(self.take_stopped())  # never leave a process stopped
            self._builder.discard()
            if self.program is not None:
                counts = self.program.snapshot()
                release = threading.Thread(target=self._release, args=(self.tracer, self.program),
                                           name="bpfcov-release")
                release.start()
                _releases.append(release)
        if counts is None:
            return None
        return self.coverage(counts, complete=True)

    @staticmethod
    def _release(tracer: Tracer | None, program: CounterProgram) -> None:
        try:
            if tracer is not None:
                tracer.wait_closed()
        finally:
            program.close()


# Sessions whose links are still closing (see Session.finish).
_releases: list[threading.Thread] = []


def wait_for_release() -> None:
    """Return when every finished session has released its links, program and maps."""
    while _releases:
        _releases.pop().join()
