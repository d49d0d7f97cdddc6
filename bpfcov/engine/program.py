"""Loading counter.c through bcc, and reading its counts without a syscall per probe.

One program serves every object and mode: it is compiled with the number of probe slots
and the mode as -D settings. `counts` is a BPF_F_MMAPABLE array mapped into this process,
so a snapshot of hundreds of thousands of counters is one numpy copy.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import subprocess
import threading
import time
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, NamedTuple

from bpfcov.errors import BpfcovError

if TYPE_CHECKING:
    import numpy as np

# Probe slots kept for objects found during a run: programs the trace execs, libraries
# (--libs, dlopen).
SPARE_SLOTS_FUNCTIONS = 1 << 18
SPARE_SLOTS_LINES = 1 << 21


def spare_slots(lines: bool, objects_may_appear: bool) -> int:
    """Probe slots to keep for objects that appear during the run (none for `watch`,
    which traces only the objects it is given)."""
    if not objects_may_appear:
        return 0
    return SPARE_SLOTS_LINES if lines else SPARE_SLOTS_FUNCTIONS


# Hits after which hit mode takes a probe out (counter.c). Taking one out stops the process
# for about a millisecond (tracer.py), the cost of a thousand traps, so a probe hit only a
# few times is cheaper left in place. On the sqlite workload at N=200,000 (128-probe
# shards), 16 ran the program 3.0x untraced, 4 ran it 4.0x (more stops), 64 3.4x (more traps).
HOT_HITS = 16

# The hit events' ring: about 170,000 records between two reads by user space.
RING_BYTES = 4 << 20

TRACEFS = "/sys/kernel/tracing"

# Processes followed at once (the BPF maps' size): a `make -j` or a server's workers.
MAX_PROCESSES = 1 << 16


def ensure_tracefs() -> None:
    """bcc reads tracepoint formats from tracefs, which a fresh machine may not mount."""
    if os.path.isdir(os.path.join(TRACEFS, "events")):
        return
    result = subprocess.run(["mount", "-t", "tracefs", "nodev", TRACEFS], capture_output=True, text=True)
    if result.returncode != 0 and not os.path.isdir(os.path.join(TRACEFS, "events")):
        raise BpfcovError(f"tracefs is not mounted at {TRACEFS} and mounting it failed: "
                          f"{result.stderr.strip() or 'mount exited ' + str(result.returncode)}")


def _has_syscall_tracepoints() -> bool:
    events = os.path.join(TRACEFS, "events", "syscalls")
    return all(os.path.isdir(os.path.join(events, f"sys_exit_{name}")) for name in ("clone", "clone3", "fork", "vfork"))


def _import_bcc():
    try:
        import bcc  # Debian's python3-bpfcc, seen through --system-site-packages
    except ImportError:
        raise BpfcovError("bcc's Python module is missing: install Debian's python3-bpfcc "
                          "(make setup does) and use a virtualenv with --system-site-packages") from None
    return bcc


def check_privileges() -> None:
    if os.geteuid() != 0:
        raise BpfcovError("tracing needs root (or CAP_BPF and CAP_PERFMON): run bpfcov with sudo")


@dataclass(frozen=True)
class ProgramOptions:
    hit_mode: bool
    follow: bool = False        # catch the children of traced processes (run, attach)
    cgroup_start: bool = False  # catch the exec of `run`'s command in its cgroup
    loader_hook: bool = False   # stop processes in the dynamic loader (--libs, --object)
    # How its probes are attached (attach.py); `auto` asks the kernel when the program loads.
    attach_method: str = "auto"


def program_options(subcommand: str, mode: str, libs: bool = False, objects=(),
                    attach_method: str = "auto") -> ProgramOptions:
    """What each tracing subcommand needs of the program."""
    hit_mode = mode == "hit"
    if subcommand == "watch":
        # Every process, by design: nothing to follow.
        return ProgramOptions(hit_mode, attach_method=attach_method)
    # The loader hook attaches libraries as they are mapped, before their first instruction.
    return ProgramOptions(hit_mode, follow=True, cgroup_start=subcommand == "run", loader_hook=libs or bool(objects),
                          attach_method=attach_method)


_libc = ctypes.CDLL(None, use_errno=True)
_SYS_MEMBARRIER = 324  # x86-64
_MEMBARRIER_CMD_GLOBAL = 1


class Reports(NamedTuple):
    """What the program reported since the last look."""
    first_hits: list[int]                # probes hit for the first time (hit mode)
    hot: list[int]                       # probes hit HOT_HITS times: to be taken out
    stopped: list[int]                   # processes stopped at those hits, until taken out
    processes: list[tuple[int, int]]     # (kind, pid) of each process stopped for user space


class _HitEvent(ctypes.Structure):
    """counter.c's struct hit_event."""
    _fields_ = [("probe", ctypes.c_uint32), ("kind", ctypes.c_uint32), ("ns", ctypes.c_uint64),
                ("pid", ctypes.c_uint32), ("unused", ctypes.c_uint32)]


_HIT_FIRST, _HIT_HOT = 1, 2


class CounterProgram:
    """The compiled BPF program with its maps. Close it to release every kernel object."""

    def __init__(self, slots: int, options: ProgramOptions, extra_cflags: tuple[str, ...] = ()):
        check_privileges()
        if options.follow:
            ensure_tracefs()  # before bcc is imported: it looks for tracefs once, at import
        bcc = _import_bcc()
        self.slots = max(1, slots)
        self.options = options
        self.hit_mode = options.hit_mode
        from bpfcov.engine.attach import choose  # imports numpy: not at the CLI's start
        self.method = choose(options.attach_method)  # first: a kernel without it fails fast
        source = resources.files("bpfcov.engine").joinpath("counter.c").read_text()
        cflags = [f"-DMAX_PROBES={self.slots}", "-Wno-unused-variable", *extra_cflags]
        if self.hit_mode:
            # Two records per probe at most (24 bytes and the ring's 8-byte header each), but
            # the kernel maps the whole ring into this process (twice), so it is sized for a
            # burst, not for every probe. A record the ring had no room for is counted in
            # `lost_events`, and the tracer then looks at the counts themselves.
            need = min(self.slots * 2 * 32, RING_BYTES)
            pages = 16
            while pages * mmap.PAGESIZE < need:
                pages *= 2
            cflags += ["-DHIT_MODE", f"-DRINGBUF_PAGES={pages}", f"-DHOT_HITS={HOT_HITS}"]
        if options.follow:
            cflags += ["-DFOLLOW", f"-DMAX_PROCESSES={MAX_PROCESSES}"]
            if not _has_syscall_tracepoints():
                cflags.append("-DRAW_SYSCALLS")
        if options.cgroup_start:
            cflags.append("-DCGROUP_START")
        if options.loader_hook:
            cflags.append("-DLOADER_HOOK")
        try:
            self._bpf = bcc.BPF(text=source, cflags=cflags)
            attach_type = self.method.program_attach_type
            self._fn = self._bpf.load_func("on_probe", bcc.BPF.KPROBE, attach_type=attach_type)
            self._loader_fn = self._bpf.load_func("on_loader_event", bcc.BPF.KPROBE,
                                                  attach_type=attach_type) if options.loader_hook else None
        except Exception as e:  # bcc raises bare Exceptions for compile and load failures
            raise BpfcovError(f"cannot load the BPF program: {str(e).splitlines()[0] if str(e) else e} "
                              "(are kernel headers installed under "
                              f"/lib/modules/{os.uname().release}/build?)") from None
        counts_fd = self._bpf["counts"].map_fd
        size = self.slots * 8
        self._mmap = mmap.mmap(counts_fd, (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE * mmap.PAGESIZE,
                               mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        import numpy as np  # here, not at the top: the CLI imports this module before compiling starts
        self.counts = np.frombuffer(self._mmap, dtype=np.uint64, count=self.slots)
        self._first: list[int] = []
        self._hot: list[int] = []
        self._hot_stopped: list[int] = []
        # When each probe was first hit (CLOCK_MONOTONIC ns; 0: not yet), for the removal
        # latency in the stats. Zeros the OS hands out lazily: untouched slots cost nothing.
        self.first_hit_ns = np.zeros(self.slots if self.hit_mode else 0, dtype=np.int64)
        self.hot_ns = np.zeros(self.slots if self.hit_mode else 0, dtype=np.int64)  # its HOT_HITS-th hit
        self._process_events: list[tuple[int, int]] = []
        if self.hit_mode:
            self._bpf["hit_events"].open_ring_buffer(self._on_hit_event)
        if options.follow or options.loader_hook:
            self._bpf["process_events"].open_ring_buffer(self._on_process_event)
        self._may_stop(True)

    def catch_exec_in_cgroup(self, cgroup_id: int) -> None:
        """Stop the first exec of any task in the cgroup v2 whose id is `cgroup_id`."""
        table = self._bpf["target_cgroup"]
        table[table.Key(0)] = table.Leaf(cgroup_id)

    def follow(self, pid: int) -> None:
        """Catch the children `pid` forks from now on."""
        table = self._bpf["traced"]
        table[table.Key(pid)] = table.Leaf(1)

    def unfollow(self, pid: int) -> None:
        table = self._bpf["traced"]
        try:
            del table[table.Key(pid)]
        except KeyError:
            pass

    @property
    def prog_fd(self) -> int:
        return self._fn.fd

    @property
    def loader_prog_fd(self) -> int | None:
        return self._loader_fn.fd if self._loader_fn is not None else None

    @property
    def has_events(self) -> bool:
        return self.hit_mode or self.options.follow or self.options.loader_hook

    def _on_hit_event(self, ctx, data, size) -> int:
        event = ctypes.cast(data, ctypes.POINTER(_HitEvent)).contents
        if event.kind & _HIT_FIRST:
            self.first_hit_ns[event.probe] = event.ns
            self._first.append(event.probe)
        if event.kind & _HIT_HOT:
            self.hot_ns[event.probe] = event.ns
            self._hot.append(event.probe)
            if event.pid:
                self._hot_stopped.append(event.pid)
        return 0

    def _on_process_event(self, ctx, data, size) -> int:
        event = ctypes.cast(data, ctypes.POINTER(ctypes.c_uint32 * 2)).contents
        self._process_events.append((event[0], event[1]))
        return 0

    def wait_events(self, timeout_ms: int) -> Reports:
        """Block up to `timeout_ms` for reports. Call from one thread only."""
        self._bpf.ring_buffer_poll(timeout_ms)
        reports = Reports(self._first, self._hot, self._hot_stopped, self._process_events)
        self._first, self._hot, self._hot_stopped, self._process_events = [], [], [], []
        return reports

    def _may_stop(self, allowed: bool) -> None:
        if self.has_events:
            table = self._bpf["may_stop"]
            table[table.Key(0)] = table.Leaf(int(allowed))

    def forbid_stops(self) -> Reports:
        """Make the program stop no process from now on, and return what it reported
        meanwhile: every process stopped so far is among them, for the caller to continue."""
        if not self.has_events:
            return Reports([], [], [], [])
        self._may_stop(False)
        # A run that saw stops allowed may still be sending its stop: each run of the
        # program is inside an RCU read-side section, and a global membarrier waits for
        # every one of those that began before it (synchronize_rcu).
        if _libc.syscall(_SYS_MEMBARRIER, _MEMBARRIER_CMD_GLOBAL, 0, 0) != 0:
            time.sleep(0.1)  # no membarrier: runs last microseconds
        return self.wait_events(0)

    def lost_events(self) -> int:
        """Hit events dropped so far for want of room in the ring (hit mode)."""
        table = self._bpf["lost_events"]
        return int(table[table.Key(0)].value)

    def snapshot(self) -> np.ndarray:
        return self.counts.copy()

    def close(self) -> None:
        if self._bpf is None:
            return
        import numpy as np
        self.counts = np.zeros(0, dtype=np.uint64)  # drops the view of the map, so it can be unmapped
        try:
            self._mmap.close()
        except (BufferError, ValueError):
            pass
        self._bpf.cleanup()
        self._bpf = None


class ProgramBuilder:
    """Compiles the counter program on a background thread, so that clang's half second
    overlaps indexing and imports (bcc's compile call releases the GIL).

    The number of probe slots is part of the compiled program, but it is known only after
    indexing; the builder compiles for a guess, and `get` compiles again in the rare case
    the guess was too small.
    """

    GUESS = 1 << 16

    def __init__(self, options: ProgramOptions, slots_guess: int = GUESS):
        self._options = options
        self._guess = slots_guess
        self._program: CounterProgram | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._build, name="bpfcov-compile", daemon=True)
        self._thread.start()

    def _build(self) -> None:
        try:
            self._program = CounterProgram(self._guess, self._options)
        except BaseException as e:  # handed to the caller of get()
            self._error = e

    def get(self, slots: int) -> CounterProgram:
        """A loaded program with at least `slots` probe slots."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        program, self._program = self._program, None
        assert program is not None  # built, or _error was set
        if program.slots >= slots:
            return program
        program.close()
        return CounterProgram(slots, self._options)

    def __enter__(self) -> ProgramBuilder:
        return self

    def __exit__(self, *exc) -> None:
        # Also on an error before tracing starts: an interpreter that exits while clang
        # still compiles on the daemon thread can crash in LLVM's teardown.
        self.discard()

    def discard(self) -> None:
        """Release the program if nobody took it (again: does nothing)."""
        self._thread.join()
        if self._program is not None:
            self._program.close()
            self._program = None
