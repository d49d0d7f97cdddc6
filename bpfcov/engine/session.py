"""A tracing session: index the objects, load the program, give each traced process its
links, collect.

The three ways of choosing what is traced differ only in how the session starts and
when it ends (see targets.py); everything here is shared by them:

    with Session(options, command, program_options) as session:
        session.add_object(path)      # objects known ahead (the command, --object, its libraries)
        session.start()
        session.cover_process(pid)    # links for one process; its children are caught in BPF
        session.announce()
        ... session.service() ...     # in the wait loop: stopped processes, exited ones
        ... session.snapshot() ...    # periodic, for --interval
        run = session.finish()        # stops tracing; links close in the background
        ... write reports ...
    # here every link, the program and its maps are gone, whatever happened

An object is known by its file (device and inode), not by its path: a process in another
mount namespace names the same file differently, and a path may be replaced while the run
goes on. bpfcov keeps each object open and gives the kernel /proc/self/fd/N to attach to.
"""

from __future__ import annotations

import dataclasses
import os
import re
import resource
import select
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from bpfcov import __version__
from bpfcov.data.merge import merge_objects
from bpfcov.data.model import ObjectCoverage, RunCoverage
from bpfcov.engine.answered import AnsweredProbes
from bpfcov.engine.execs import NO_FUNCTIONS, NOT_INDEXED, ExecPolicy
from bpfcov.engine.plan import ObjectPlan, plan_object
from bpfcov.engine.processes import Mapping, executable_mappings
from bpfcov.engine.program import CounterProgram, ProgramBuilder, ProgramOptions
from bpfcov.engine.tracer import DEFAULT_SHARD_SIZE, Tracer
from bpfcov.engine.uprobe_multi import LinkError
from bpfcov.errors import BpfcovError, NoFunctionsError
from bpfcov.probes.index import index_object
from bpfcov.probes.insn import instruction_length, is_branch, refusal
from bpfcov.probes.model import LineTable, ObjectIndex, ProbeStatus, name_filter

# How often processes are searched for libraries mapped without the loader's knowledge.
RESCAN_SECONDS = 1.0


@dataclass
class TraceOptions:
    mode: str = "hit"
    lines: bool = False
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    debug_dirs: tuple[str, ...] = ()
    quiet: bool = False
    shard_size: int = DEFAULT_SHARD_SIZE
    attach_method: str = "auto"  # attach.CHOICES
    # Slots kept free for objects that appear during the run (dlopen, --libs).
    spare_slots: int = 0
    ends_by_itself: bool = True  # False for watch and attach, which say how to end them
    libs_only: tuple[str, ...] = ()  # with libs: only libraries whose path one of these matches


@dataclass
class TracedObject:
    key: tuple[int, int]     # (st_dev, st_ino): the file itself
    fd: int                  # kept open for the session
    index: ObjectIndex
    plan: ObjectPlan | None = None  # numbered at start(), or when found later

    @property
    def kernel_path(self) -> str:
        """What the kernel opens to attach: this very file, whatever its path is now."""
        return f"/proc/self/fd/{self.fd}"


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
        lines = _line_rows(lines, new_owner >= 0, new_owner)
    return ObjectIndex(index.path, index.build_id, functions, lines, index.warnings, index.debug_file)


def _line_rows(lines: LineTable, rows: np.ndarray, owner: np.ndarray | None = None) -> LineTable:
    owner = lines.function if owner is None else owner
    return LineTable(lines.files, lines.address[rows], lines.offset[rows], lines.file[rows],
                     lines.line[rows], owner[rows])


def say(options: TraceOptions, message: str) -> None:
    if not options.quiet:
        print(f"bpfcov: {message}", file=sys.stderr, flush=True)


# Descriptors for everything but links: the objects kept open, maps, pidfds, reports.
FD_RESERVE = 1024


# Hit mode's links of one process may take this share of the descriptors: room for
# several processes at once (a runner's), each with its own links.
LINK_SHARE = 4


def raise_fd_limit() -> tuple[tuple[int, int], int]:
    """Allow as many open files as the kernel lets bpfcov have: each traced process holds
    a link per shard of each object it maps (with perf events, one per probe). Returns the
    limits as they were, for the traced command to get back, and the new one."""
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        # Above the hard limit only with CAP_SYS_RESOURCE, and never above fs.nr_open.
        with open("/proc/sys/fs/nr_open") as f:
            ceiling = int(f.read())
        resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, ceiling))
    except (OSError, ValueError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (before[1], before[1]))
    return before, resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def check_links_fit(link_fds: int, probes: int, limit: int) -> None:
    """Fail, before anything is attached, when the `link_fds` the first process needs for
    its `probes` do not fit under the open-file `limit`."""
    if link_fds + FD_RESERVE > limit:
        raise BpfcovError(f"{probes:,} probes need {link_fds + FD_RESERVE:,} open files with this attach method, "
                          f"above the limit of {limit:,} (RLIMIT_NOFILE's hard limit): trace fewer functions "
                          "with --include, or raise the limit (ulimit -Hn)")


def hit_shard_size(probes: int, smallest: int, limit: int) -> int:
    """Probes per link in hit mode: `smallest`, since a link is replaced whole to drop a
    probe and every probe it keeps costs the traced process (tracer.py), unless one
    process's links would then take more than their share of the open-file `limit`."""
    budget = max(1, (limit - FD_RESERVE) // LINK_SHARE)
    return max(smallest, -(-probes // budget))


def _open_mapped(pid: int, mapping: Mapping) -> int | None:
    """A descriptor of the very file `pid` maps: through map_files, else through the
    process's root if the inode is the one it maps; None when neither works."""
    try:
        return os.open(mapping.map_file, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        pass
    try:
        fd = os.open(f"/proc/{pid}/root{mapping.path}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    if str(os.fstat(fd).st_ino) == mapping.identity[1]:
        return fd
    os.close(fd)
    return None


def _file_key(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


class Session:
    def __init__(self, options: TraceOptions, command: list[str], program_options: ProgramOptions,
                 libs: bool = False, cgroup_id: int | None = None, every_process: bool = False,
                 builder: ProgramBuilder | None = None, execs: ExecPolicy | None = None):
        """`libs`: probe every shared library a traced process maps, not only those added
        ahead. `execs`: which programs a traced process execs are probed (None: only those
        added ahead). `cgroup_id`: the cgroup whose first exec is `run`'s command.
        `every_process`: pid-0 links for `watch`, on every process that maps the objects.
        `builder`: a compile the command started early (commands/tracing.py); else one
        starts now."""
        self.options = options
        self.command = command
        self.program_options = program_options
        self.libs = libs
        self.execs = execs
        self.cgroup_id = cgroup_id
        self.every_process = every_process
        self.objects: dict[tuple[int, int], TracedObject] = {}
        # What each mapping (device and inode as /proc/PID/maps shows them, and whether it
        # is the process's program or a library) turned out to be: the key of a traced
        # object, or None for a file not traced.
        self._mapping_keys: dict[tuple, tuple[int, int] | None] = {}
        self._loaders: dict[tuple[int, int], tuple[int, int] | None] = {}  # key -> (fd, _dl_debug_state)
        self._answered: AnsweredProbes | None = None
        self._wanted = name_filter(options.include, options.exclude) \
            if options.include or options.exclude else None
        self.program: CounterProgram | None = None
        self.tracer: Tracer | None = None
        self._builder = builder or ProgramBuilder(program_options, ProgramBuilder.GUESS + options.spare_slots)
        # Set when there is something for the waiting thread to do: a stop request or a
        # process stopped for its links.
        self.wake = threading.Event()
        self._stopped: list[int] = []
        self._stopped_lock = threading.Lock()
        self._pidfds: dict[int, int] = {}
        self._exits = select.poll()
        self._next_rescan = 0.0
        self.refusals: dict[int, int | None] = {}  # probe -> offset it moved to, None if dropped
        self.started = time.time()
        # The BPF program's clock (CLOCK_MONOTONIC), read before any probe is in: first
        # hits are kept as ns from here, comparable across the runs a merge combines.
        self._started_ns = time.monotonic_ns()
        self.ended: float | None = None
        self.warnings: list[str] = []
        self._probes_left: int | None = None  # probes still attached when tracing stopped
        self._finished = False
        self._release: threading.Thread | None = None
        self.fd_limit_before: tuple[int, int] | None = None  # RLIMIT_NOFILE before start()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        """Finish if not yet done, and wait until every kernel object is released."""
        if not self._finished:
            self.finish()
        if self._release is not None:
            self._release.join()

    @property
    def _engine(self) -> tuple[CounterProgram, Tracer]:
        """The program and tracer of a started session."""
        if self.program is None or self.tracer is None:
            raise BpfcovError("tracing has not started")
        return self.program, self.tracer

    # -- objects -----------------------------------------------------------------------
    def _warn(self, message: str) -> None:
        self.warnings.append(message)
        say(self.options, f"warning: {message}")

    def _index(self, path: str, name: str) -> ObjectIndex:
        index = index_object(path, lines=self.options.lines, debug_dirs=self.options.debug_dirs,
                             quiet=self.options.quiet, name=name)
        for w in index.warnings:
            say(self.options, f"warning: {w}")
        return _filtered(index, self._wanted) if self._wanted is not None else index

    def _adopt(self, fd: int, path: str, name: str) -> TracedObject:
        """Index the file open at `fd` (read at `path`) and trace it from now on."""
        obj = TracedObject(_file_key(fd), fd, self._index(path, name))
        self.objects[obj.key] = obj
        if self.tracer is not None:
            self._register(obj, plan_object(obj.index, self._next_probe()))
        return obj

    def add_object(self, path: str, required: bool = True, name: str | None = None) -> None:
        """Trace the object at `path` in every process that maps it. `name`: its path as
        reports show it, when `path` is only a way in (/proc/PID/exe). An object that is not
        `required` and cannot be indexed is skipped with a warning."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            if required:
                raise BpfcovError(f"{path}: {e.strerror}") from None
            return
        if _file_key(fd) in self.objects:
            os.close(fd)
            return
        try:
            self._adopt(fd, path, name or os.path.realpath(path))
        except BpfcovError as e:
            os.close(fd)
            if required:
                raise
            self._warn(f"not tracing {name or path}: {e}")

    def wants_library(self, path: str) -> bool:
        """Whether a shared library is to be traced: with --libs, and when --libs-only
        names some, one whose path a pattern matches."""
        return self.libs and (not self.options.libs_only or any(re.search(p, path) for p in self.options.libs_only))

    def _wants(self, mapping: Mapping, is_program: bool) -> bool:
        """Whether a file no object is known for yet is to be traced: a process's program
        as the exec policy says, a library when --libs is given."""
        if not is_program:
            return self.wants_library(mapping.path)
        if self.execs is None:
            return False
        reason = self.execs.reason_to_skip(mapping.path)
        if reason is not None:
            self.execs.count_skipped(reason)
        return reason is None

    def _object_for(self, pid: int, mapping: Mapping, is_program: bool) -> TracedObject | None:
        """The traced object a process's mapping is, adopting it if the exec policy or
        --libs wants it. `is_program`: the mapping is the process's executable."""
        seen = (mapping.identity, is_program)
        if seen in self._mapping_keys:
            key = self._mapping_keys[seen]
            return self.objects.get(key) if key is not None else None
        fd = _open_mapped(pid, mapping)
        if fd is None:
            return None  # unmapped meanwhile: seen again at the next look
        key = _file_key(fd)
        obj = self.objects.get(key)
        if obj is not None or os.pread(fd, 4, 0) != b"\x7fELF" or not self._wants(mapping, is_program):
            os.close(fd)
            self._mapping_keys[seen] = obj.key if obj is not None else None
            return obj
        # Read it where the process sees it when that is the same file (debug files are
        # then found beside it), else through the descriptor.
        path = f"/proc/{pid}/root{mapping.path}"
        try:
            there = os.stat(path)
            if (there.st_dev, there.st_ino) != key:
                path = f"/proc/self/fd/{fd}"
        except OSError:
            path = f"/proc/self/fd/{fd}"
        try:
            obj = self._adopt(fd, path, mapping.path)
        except BpfcovError as e:
            os.close(fd)
            self._mapping_keys[seen] = None
            if is_program and self.execs is not None:
                # A runner execs many programs; one without symbols is a launcher, said in
                # the summary rather than in a warning each.
                self.execs.count_skipped(NO_FUNCTIONS if isinstance(e, NoFunctionsError) else NOT_INDEXED)
            else:
                self._warn(f"not tracing {mapping.path}: {e}")
            return None
        self._mapping_keys[seen] = key
        if is_program and self.execs is not None:
            self.execs.probed += 1
        return obj

    def _next_probe(self) -> int:
        plans = [o.plan for o in self.objects.values() if o.plan is not None]
        return max((p.first_probe + p.probe_count for p in plans), default=0)

    def _register(self, obj: TracedObject, plan: ObjectPlan) -> None:
        """Number the object's probes as `plan` says and make them ready to attach."""
        program, tracer = self._engine
        if plan.first_probe + plan.probe_count > program.slots:
            self._warn(f"no probe slots left for {obj.index.path}; it is not traced")
            return
        obj.plan = plan
        if self._answered is not None:
            self._answered.add(plan)
        if plan.probe_count:
            tracer.add_object(obj.key, obj.kernel_path, plan.offsets, plan.first_probe)
        if self.every_process:
            tracer.attach(0, obj.key)

    # -- processes ---------------------------------------------------------------------
    def cover_process(self, pid: int) -> bool:
        """Give process `pid` links on every traced object it maps (and the loader hook),
        and follow its children. False when the process has gone."""
        if pid not in self._pidfds:
            try:
                self._pidfds[pid] = os.pidfd_open(pid)
            except OSError:
                return False
            self._exits.register(self._pidfds[pid], select.POLLIN)
        program, tracer = self._engine
        program.follow(pid)
        try:
            program_path = os.readlink(f"/proc/{pid}/exe").removesuffix(" (deleted)")
        except OSError:
            return False
        for mapping in executable_mappings(pid):
            obj = self._object_for(pid, mapping, mapping.path == program_path)
            if obj is not None and not tracer.attach(pid, obj.key):
                return False
            if self.program_options.loader_hook and os.path.basename(mapping.path).startswith("ld-"):
                self._hook_loader(pid, mapping)
        return True

    def _hook_loader(self, pid: int, mapping: Mapping) -> None:
        """Stop `pid` in the dynamic loader whenever it maps objects (dlopen included)."""
        fd = _open_mapped(pid, mapping)
        if fd is None:
            return
        key = _file_key(fd)
        if key not in self._loaders:
            self._loaders[key] = None
            # _dl_debug_state is in .dynsym: no download while the process waits for its links.
            index = index_object(f"/proc/self/fd/{fd}", quiet=True, name=mapping.path, debuginfod=False)
            debug_state = next((f for f in index.functions if "_dl_debug_state" in
                                (f.name.split("@")[0], *(a.split("@")[0] for a in f.aliases))), None)
            if debug_state is None or debug_state.probe_offset is None:
                self._warn(f"{mapping.path} has no _dl_debug_state; libraries opened with dlopen() are found "
                           "by polling, and their first calls may be missed")
            else:
                self._loaders[key] = (fd, debug_state.probe_offset)
                fd = None
        if fd is not None:
            os.close(fd)
        hook = self._loaders[key]
        if hook is not None:
            self._engine[1].add_loader_hook(pid, f"/proc/self/fd/{hook[0]}", hook[1])

    def _processes_stopped(self, events: list[tuple[int, int]]) -> None:
        """Called from the event thread: these processes are stopped for their links."""
        with self._stopped_lock:
            self._stopped.extend(pid for _, pid in events)
        self.wake.set()

    def service(self) -> None:
        """Give each stopped process its links and let it go on; forget exited processes.
        Called by the thread that waits for the trace to end."""
        with self._stopped_lock:
            stopped, self._stopped = self._stopped, []
        try:
            for pid in dict.fromkeys(stopped):
                self._cover_or_warn(pid)
        finally:
            self.resume(stopped)
        if self.libs and time.monotonic() >= self._next_rescan:
            self._next_rescan = time.monotonic() + RESCAN_SECONDS
            for pid in list(self._pidfds):
                self._cover_or_warn(pid)
        for fd, _ in self._exits.poll(0):
            pid = next(p for p, f in self._pidfds.items() if f == fd)
            self._forget(pid)

    def _cover_or_warn(self, pid: int) -> None:
        """cover_process, where a failure costs that process's coverage, not the run."""
        try:
            self.cover_process(pid)
        except (BpfcovError, LinkError) as e:
            self._warn(f"process {pid} is not fully traced: {e}")

    def _forget(self, pid: int) -> None:
        program, tracer = self._engine
        tracer.detach(pid)
        program.unfollow(pid)
        self._exits.unregister(self._pidfds[pid])
        os.close(self._pidfds.pop(pid))

    @staticmethod
    def resume(pids: list[int]) -> None:
        for pid in set(pids):
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass

    # -- probes the kernel refuses -------------------------------------------------------
    def _owner(self, probe: int) -> tuple[TracedObject, ObjectPlan]:
        return next((o, o.plan) for o in self.objects.values()
                    if o.plan is not None and o.plan.first_probe <= probe < o.plan.first_probe + o.plan.probe_count)

    def _refused(self, probe: int, offset: int) -> int | None:
        """The kernel refused `probe` at `offset`: where to probe instead, or None to drop it.

        A function's entry moves to its next instruction, which runs exactly when the
        entry does, if the entry is not a branch; a line probe is dropped (its line is then
        not reported, rather than reported unexecuted), and so is an inlined instance's (its
        function is then unmeasured unless something of it ran). Called by the tracer."""
        obj, plan = self._owner(probe)
        moved = None
        entries = np.flatnonzero(plan.function_probe == probe)
        if len(entries) and probe not in self.refusals:
            function = obj.index.functions[int(entries[0])]
            code = os.pread(obj.fd, 16, offset)
            length = instruction_length(code)
            if length and not is_branch(code) and offset + length < function.offset + function.size \
                    and refusal(os.pread(obj.fd, 16, offset + length)) is None:
                moved = offset + length
        self.refusals[probe] = moved
        return moved

    def _with_refusals(self, obj: TracedObject, plan: ObjectPlan) -> tuple[ObjectIndex, np.ndarray | None]:
        """The object's index as measured: functions whose probe the kernel refused are
        moved or unmeasured, refused line probes gone. Also the line rows kept."""
        index = obj.index
        refused = [p for p in self.refusals if plan.first_probe <= p < plan.first_probe + plan.probe_count]
        if not refused:
            return index, None
        functions = list(index.functions)
        for i in np.flatnonzero(np.isin(plan.function_probe, refused)):
            f = functions[i]
            moved = self.refusals[int(plan.function_probe[i])]
            note = "the kernel refused the probe at the entry"
            functions[i] = dataclasses.replace(
                f, probe=ProbeStatus.MOVED if moved is not None else ProbeStatus.UNMEASURED, probe_offset=moved,
                probe_note=f"{note}; probed at +{moved - f.offset}" if moved is not None else note)
        # An inlined instance that lost a probe may run unseen: its function's "never
        # executed" is unsure, so count the instance unmeasured.
        dropped = [p for p in refused if self.refusals[p] is None]
        hurt = np.unique(plan.instance_of_probe[np.isin(plan.instance_probe, dropped)])
        for fi, n in zip(*np.unique(plan.instance_function[hurt], return_counts=True)):
            f = functions[int(fi)]
            functions[int(fi)] = dataclasses.replace(f, inlined_unmeasured=f.inlined_unmeasured + int(n))
        keep = None
        lines = index.lines
        if lines is not None and plan.line_probe is not None:
            keep = ~np.isin(plan.line_probe, refused)
            lines = _line_rows(lines, keep)
        return dataclasses.replace(index, functions=functions, lines=lines), keep

    # -- life cycle --------------------------------------------------------------------
    def start(self) -> None:
        """Load the BPF program and get every object ready to attach."""
        # Number every object's probes once: their total sizes the program.
        plans, first_probe = [], 0
        for obj in self.objects.values():
            plans.append(plan_object(obj.index, first_probe))
            first_probe += plans[-1].probe_count
        self.program = self._builder.get(first_probe + self.options.spare_slots)
        self.fd_limit_before, limit = raise_fd_limit()
        # Without lines, a probe of hit mode asks only whether its functions ever ran.
        self._answered = AnsweredProbes() if self.program.hit_mode and not self.options.lines else None
        self.tracer = Tracer(self.program, hit_shard_size(first_probe, self.options.shard_size, limit),
                             on_process_events=self._processes_stopped, on_refused=self._refused,
                             on_first_hits=self._answered.hit if self._answered is not None else None)
        shard_size = self.tracer.shard_size
        check_links_fit(sum(-(-p.probe_count // shard_size) for p in plans), first_probe, limit)
        if self.cgroup_id is not None:
            self.program.catch_exec_in_cgroup(self.cgroup_id)
        for obj, plan in zip(list(self.objects.values()), plans):
            self._register(obj, plan)
        self.tracer.start()
        self.started = time.time()

    def announce(self) -> None:
        """Say what is traced, once probes are in place (a user may act on this line)."""
        plans = [o.plan for o in self.objects.values() if o.plan is not None]
        functions = sum(int((p.function_probe >= 0).sum()) for p in plans)
        lines = sum(len(p.index.lines) for p in plans if p.index.lines is not None)
        n = len(plans)
        parts = []
        if n or self.execs is None:
            what = f"{functions:,} functions" + (f" and {lines:,} lines" if self.options.lines else "")
            parts.append(f"{what} in {n} object{'s' if n != 1 else ''}")
        if self.execs is not None:
            parts.append(self.execs.scope())
        if self.libs:
            parts.append("any library a traced process maps")
        end = "" if self.options.ends_by_itself else " Ctrl-C to end."
        say(self.options, f"Tracing {', '.join(parts[:-1]) + ' and ' if len(parts) > 1 else ''}{parts[-1]} "
                          f"({self.options.mode} mode, {self._engine[0].method.name} links)...{end}")

    def coverage(self, counts: np.ndarray, complete: bool) -> RunCoverage:
        objects = []
        for obj in self.objects.values():
            plan = obj.plan
            if plan is None:
                continue
            index, kept_lines = self._with_refusals(obj, plan)
            fp = plan.function_probe
            fcounts = np.where(fp >= 0, counts[np.maximum(fp, 0)].astype(np.int64), 0)
            lcounts = None
            if plan.line_probe is not None:
                lp = plan.line_probe if kept_lines is None else plan.line_probe[kept_lines]
                lcounts = np.where(lp >= 0, counts[np.maximum(lp, 0)].astype(np.int64), 0) if len(lp) \
                    else np.zeros(0, dtype=np.int64)
            objects.append(ObjectCoverage(index, fcounts, lcounts, plan.inlined_runs(counts),
                                          self._first_hits(plan, kept_lines)))
        return RunCoverage(
            mode=self.options.mode, command=list(self.command), started=self.started,
            ended=self.ended if complete else time.time(), host=socket.gethostname(),
            kernel=os.uname().release, lines=self.options.lines,
            # A runner may run one test binary from several files (rebuilt, copied): one
            # object in the reports, as gcov would sum them.
            objects=merge_objects(objects, self.options.lines),
            complete=complete, bpfcov_version=__version__, stats=self.stats(counts))

    def _first_hits(self, plan: ObjectPlan, kept_lines: np.ndarray | None) -> np.ndarray | None:
        """Per function: ns from the start of tracing to its first hit, at its entry or at
        any of its lines, whichever came first; 0 where no first hit was seen. None in
        count mode, which does not see first hits."""
        assert self.program is not None
        moments = self.program.first_hit_ns.copy()  # the tracer thread writes it
        if not len(moments):
            return None
        never = np.iinfo(np.int64).max

        def at(probes: np.ndarray) -> np.ndarray:
            ns = moments[np.maximum(probes, 0)]
            return np.where((probes >= 0) & (ns > 0), ns, never)

        first = at(plan.function_probe)
        lines = plan.index.lines
        if plan.line_probe is not None and lines is not None and len(plan.line_probe):
            keep = slice(None) if kept_lines is None else kept_lines
            np.minimum.at(first, lines.function[keep].astype(np.int64), at(plan.line_probe[keep]))
        return np.where(first < never, np.maximum(first - self._started_ns, 1), 0)

    def stats(self, counts: np.ndarray | None = None) -> dict:
        """Figures on the run itself, kept with its data (`counts`: the final counts)."""
        tracer = self.tracer.stats if self.tracer is not None else None
        removal = self.tracer.removal_stats(counts) \
            if self.tracer is not None and counts is not None and self.tracer.program.hit_mode else {}
        return {
            "attach_method": self.program.method.name if self.program is not None else None,
            "probes": sum(o.plan.probe_count for o in self.objects.values() if o.plan is not None),
            "relinks": tracer.relinks if tracer else 0,
            "relink_seconds": round(tracer.relink_seconds, 4) if tracer else 0.0,
            "links_created": tracer.links_created if tracer else 0,
            "processes": tracer.processes if tracer else 0,
            "probes_refused_at_attach": tracer.refused if tracer else 0,
            "probes_left": self._probes_left if self._probes_left is not None else
            (self.tracer.probes_left if self.tracer else 0),
            "peak_rss_kib": _peak_rss_kib(),
            **({"execs": self.execs.summary()} if self.execs is not None else {}),
            **removal,
        }

    def snapshot(self) -> RunCoverage:
        """The counts so far, for a periodic snapshot; tracing goes on."""
        if self.program is None:
            raise BpfcovError("tracing has not started")
        return self.coverage(self.program.snapshot(), complete=False)

    def finish(self) -> RunCoverage | None:
        """Stop tracing and return the final counts. The links close in the background
        (each waits out a grace period; hundreds of them take a while) while the caller
        writes its reports; leaving the `with` block waits until every kernel object is
        gone."""
        self._finished = True
        self.ended = time.time()
        counts = None
        try:
            if self.tracer is not None:
                self._probes_left = self.tracer.probes_left
                self.tracer.close(wait=False)
                for e in self.tracer.stats.errors[:3]:
                    say(self.options, f"warning: {e}")
        finally:
            with self._stopped_lock:
                stopped, self._stopped = self._stopped, []
            self.resume(stopped)  # never leave a process stopped
            for fd in self._pidfds.values():
                os.close(fd)
            self._pidfds = {}
            self._builder.discard()
            if self.program is not None:
                counts = self.program.snapshot()
                self._release = threading.Thread(target=self._close_all, name="bpfcov-release",
                                                 args=(self.tracer, self.program, self._open_files()))
                self._release.start()
            else:
                self._close_files(self._open_files())
        if counts is None:
            return None
        return self.coverage(counts, complete=True)

    def _open_files(self) -> list[int]:
        return [o.fd for o in self.objects.values()] + [h[0] for h in self._loaders.values() if h is not None]

    @staticmethod
    def _close_files(fds: list[int]) -> None:
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass

    @classmethod
    def _close_all(cls, tracer: Tracer | None, program: CounterProgram, files: list[int]) -> None:
        try:
            if tracer is not None:
                tracer.wait_closed()
        finally:
            program.close()
            cls._close_files(files)  # after the links: the kernel opened them by these


def _peak_rss_kib() -> int:
    """This process's own peak resident memory. Not getrusage's ru_maxrss: Linux carries
    that across fork and exec, so a bpfcov started by a big parent would report the
    parent's peak (a test runner's 550 MB, not bpfcov's 350 MB)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0
