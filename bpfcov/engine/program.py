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
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING

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
            # One 4-byte record per first hit; room for every probe's first hit at once means
            # no first hit is ever dropped, even if user space falls behind.
            need = self.slots * 16
            pages = 16
            while pages * mmap.PAGESIZE < need and pages < (1 << 16):
                pages *= 2
            cflags += ["-DHIT_MODE", f"-DRINGBUF_PAGES={pages}"]
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
        self._first_hits: list[int] = []
        self._process_events: list[tuple[int, int]] = []
        if self.hit_mode:
            self._bpf["first_hits"].open_ring_buffer(self._on_first_hit)
        if options.follow or options.loader_hook:
            self._bpf["process_events"].open_ring_buffer(self._on_process_event)

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

    def _on_first_hit(self, ctx, data, size) -> int:
        self._first_hits.append(ctypes.cast(data, ctypes.POINTER(ctypes.c_uint32))[0])
        return 0

    def _on_process_event(self, ctx, data, size) -> int:
        event = ctypes.cast(data, ctypes.POINTER(ctypes.c_uint32 * 2)).contents
        self._process_events.append((event[0], event[1]))
        return 0

    def wait_events(self, timeout_ms: int) -> tuple[list[int], list[tuple[int, int]]]:
        """Block up to `timeout_ms` for reports: (probes hit for the first time, (kind, pid)
        of each process stopped for user space). Call from one thread only."""
        self._bpf.ring_buffer_poll(timeout_ms)
        hits, self._first_hits = self._first_hits, []
        events, self._process_events = self._process_events, []
        return hits, events

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

    def discard(self) -> None:
        """Release the program if nobody took it."""
        self._thread.join()
        if self._program is not None:
            self._program.close()
            self._program = None
