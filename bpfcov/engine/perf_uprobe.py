"""perf_event uprobes: the per-probe attach method, for kernels without uprobe_multi (5.15-6.5).

Each probe is one perf event on the `uprobe` PMU (Linux 4.17 and later: the path goes in
`config1`, the file offset in `config2`), to which a BPF link (attach type BPF_PERF_EVENT)
binds the program with the probe's cookie (cookies on perf links since 5.15). The link
holds the event, so the event's own descriptor is closed at once: one descriptor per probe
and process, and closing it removes that probe alone, with no relink.

What `pid` and `inherit` give here (kernel/trace/trace_uprobe.c and kernel/events/core.c,
read for 5.15, 6.1 and 6.18; forks, threads and execs are tested with this method):
- perf_event_open(pid=P, cpu=-1) binds the event to P's main thread, but the uprobe
  core's filter for perf events (__uprobe_perf_filter) compares address spaces, not
  tasks: every thread of P runs the program, and only P's address space gets the
  breakpoint. The event follows P across execve, as the filter reads P's mm at each hit.
- `inherit` gives nothing to count with. The link is created, but a forked child's
  inherited event is made anew by the PMU (a local trace_uprobe of its own, with an empty
  program array), so the child traps on every hit and runs no program; and the PMU
  re-reads the path through the tracer's pointer, in the forking process's memory. So
  `inherit` stays off, and forks are followed as for uprobe_multi: the child is stopped
  before its first instruction (counter.c) and given events of its own. A breakpoint it
  inherited that no event of its wants is removed from it at its first hit.
- pid=-1 (every process, for `watch`) needs a CPU; one event on CPU 0 serves every CPU:
  the program runs before perf looks at which CPU the event is on.

Releasing a probe is slow and serial: the link's release waits out a tasks-trace grace
period, and the event's (perf_uprobe_destroy) holds the global event_mutex across three
or four more: 30-100 ms a probe on 6.18 (10 to 30 a second here), one at a time whatever
the threads.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os

import numpy as np

from bpfcov.engine.uprobe_multi import BPF_LINK_CREATE, SYS_BPF, LinkError, explain_errno

SYS_PERF_EVENT_OPEN = 298  # x86-64
BPF_PERF_EVENT = 41
PERF_FLAG_FD_CLOEXEC = 1 << 3
UPROBE_PMU_TYPE = "/sys/bus/event_source/devices/uprobe/type"

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _PerfEventAttr(ctypes.Structure):
    """struct perf_event_attr up to config2 (PERF_ATTR_SIZE_VER1, 72 bytes), the rest zero."""
    _fields_ = [
        ("type", ctypes.c_uint32),
        ("size", ctypes.c_uint32),
        ("config", ctypes.c_uint64),         # bit 0 of the uprobe PMU's config: a return probe
        ("sample_period", ctypes.c_uint64),
        ("sample_type", ctypes.c_uint64),
        ("read_format", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),          # disabled, inherit, ...: all off
        ("wakeup_events", ctypes.c_uint32),
        ("bp_type", ctypes.c_uint32),
        ("config1", ctypes.c_uint64),        # uprobe PMU: pointer to the path
        ("config2", ctypes.c_uint64),        # uprobe PMU: file offset
    ]


class _PerfLinkAttr(ctypes.Structure):
    """union bpf_attr for BPF_LINK_CREATE on a perf event."""
    _fields_ = [
        ("prog_fd", ctypes.c_uint32),
        ("target_fd", ctypes.c_uint32),      # the perf event
        ("attach_type", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("bpf_cookie", ctypes.c_uint64),
        ("_rest", ctypes.c_uint8 * 96),      # the rest of union bpf_attr: must be zero
    ]


@functools.cache
def pmu_type() -> int:
    """The uprobe PMU's perf type number; LinkError(ENOENT) on a kernel without it."""
    try:
        with open(UPROBE_PMU_TYPE) as f:
            return int(f.read())
    except OSError:
        raise LinkError(f"{UPROBE_PMU_TYPE} is missing: this kernel has no uprobe PMU (Linux 4.17 and later "
                        "have it)", errno.ENOENT) from None


def open_event(path: str, offset: int, pid: int) -> int:
    """A perf event for a uprobe at file `offset` of `path` in process `pid` (0: every
    process); the event's fd."""
    path_buf = ctypes.create_string_buffer(os.fsencode(path))
    attr = _PerfEventAttr()
    attr.type = pmu_type()
    attr.size = ctypes.sizeof(attr)
    attr.config1 = ctypes.addressof(path_buf)
    attr.config2 = offset
    task, cpu = (pid, -1) if pid else (-1, 0)
    fd = _libc.syscall(SYS_PERF_EVENT_OPEN, ctypes.byref(attr), task, cpu, -1, PERF_FLAG_FD_CLOEXEC)
    if fd < 0:
        err = ctypes.get_errno()
        raise LinkError(f"cannot open a uprobe event at {path}+{offset:#x}: {explain_errno(err)}", err)
    return fd


def link_event(prog_fd: int, event_fd: int, cookie: int) -> int:
    """Bind the program to the event with `cookie`; the link's fd, which holds the event."""
    attr = _PerfLinkAttr()
    attr.prog_fd = prog_fd
    attr.target_fd = event_fd
    attr.attach_type = BPF_PERF_EVENT
    attr.bpf_cookie = cookie
    fd = _libc.syscall(SYS_BPF, BPF_LINK_CREATE, ctypes.byref(attr), ctypes.sizeof(attr))
    if fd < 0:
        err = ctypes.get_errno()
        if err == errno.EINVAL:
            raise LinkError("this kernel cannot link a BPF program to a perf event with a cookie "
                            "(Linux 5.15 and later can)", err)
        raise LinkError(f"cannot link the program to a uprobe event: {explain_errno(err)}", err)
    return fd


def create_link(prog_fd: int, path: str, offsets: np.ndarray, cookies: np.ndarray, pid: int = 0) -> int:
    """One probe, as uprobe_multi.create_link takes them: the link's fd."""
    if len(offsets) != 1 or len(cookies) != 1:
        raise ValueError(f"a perf event holds one probe, not {len(offsets)}")
    event = open_event(path, int(offsets[0]), pid)
    try:
        return link_event(prog_fd, event, int(cookies[0]))
    finally:
        os.close(event)  # the link holds the event from now on


def check_support(prog_fd: int) -> None:
    """Fail unless this kernel links a program to a perf uprobe with a cookie. Asked of
    the kernel itself, on a file no process maps (this module's source), for bpfcov's own
    pid: no breakpoint is put anywhere."""
    os.close(create_link(prog_fd, os.path.abspath(__file__), np.zeros(1, dtype=np.uint64),
                         np.zeros(1, dtype=np.uint64), os.getpid()))
