"""uprobe_multi links: one bpf(BPF_LINK_CREATE) call puts one BPF program on many uprobes.

bcc has no API for this link type, so the syscall is made through ctypes. The layout of
`union bpf_attr` for it is in docs/kernel-facts.md (from include/uapi/linux/bpf.h).
Closing the returned fd detaches every probe of the link; it is the only way to remove
them, and it waits for an RCU-tasks-trace grace period, so callers close links off the
hot path (see tracer.py).
"""

from __future__ import annotations

import ctypes
import errno
import os

import numpy as np

from bpfcov.errors import BpfcovError

SYS_BPF = 321  # x86-64
BPF_LINK_CREATE = 28
BPF_TRACE_UPROBE_MULTI = 48
MAX_PROBES_PER_LINK = 1 << 20  # the kernel's MAX_UPROBE_MULTI_CNT
ENOTSUPP = 524  # kernel-internal errno: an instruction uprobes refuse

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _LinkCreateAttr(ctypes.Structure):
    _fields_ = [
        ("prog_fd", ctypes.c_uint32),
        ("target_fd", ctypes.c_uint32),
        ("attach_type", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("path", ctypes.c_uint64),
        ("offsets", ctypes.c_uint64),
        ("ref_ctr_offsets", ctypes.c_uint64),
        ("cookies", ctypes.c_uint64),
        ("cnt", ctypes.c_uint32),
        ("uprobe_flags", ctypes.c_uint32),
        ("pid", ctypes.c_uint32),
        ("_rest", ctypes.c_uint8 * 68),  # the rest of union bpf_attr: must be zero
    ]


class LinkError(BpfcovError):
    def __init__(self, message: str, errno_value: int):
        super().__init__(message)
        self.errno = errno_value


def create_link(prog_fd: int, path: str, offsets: np.ndarray, cookies: np.ndarray, pid: int = 0) -> int:
    """Attach `prog_fd` at each file offset of `path`; return the link's fd.

    `cookies[i]` reaches the program for a hit at `offsets[i]`. `pid` 0 means every process
    that maps the file, now or later.
    """
    count = len(offsets)
    if count == 0 or count > MAX_PROBES_PER_LINK or len(cookies) != count:
        raise ValueError(f"bad probe count {count}")
    offs = np.ascontiguousarray(offsets, dtype=np.uint64)
    cks = np.ascontiguousarray(cookies, dtype=np.uint64)
    path_buf = ctypes.create_string_buffer(os.fsencode(path))
    attr = _LinkCreateAttr()
    attr.prog_fd = prog_fd
    attr.attach_type = BPF_TRACE_UPROBE_MULTI
    attr.path = ctypes.addressof(path_buf)
    attr.offsets = offs.ctypes.data
    attr.cookies = cks.ctypes.data
    attr.cnt = count
    attr.pid = pid
    fd = _libc.syscall(SYS_BPF, BPF_LINK_CREATE, ctypes.byref(attr), ctypes.sizeof(attr))
    if fd < 0:
        err = ctypes.get_errno()
        why = explain_errno(err) if err != errno.EINVAL else \
            "invalid argument (is this kernel older than 6.6, without uprobe_multi?)"
        raise LinkError(f"cannot attach {count} uprobes to {path}: {why}", err)
    return fd


def check_support(prog_fd: int) -> None:
    """Fail unless this kernel creates uprobe_multi links with a pid (Linux 6.6 and later).

    Asked of the kernel itself: a one-probe link on a file no process maps (this module's
    own source), filtered to bpfcov's pid, installs no breakpoint anywhere."""
    path = os.path.abspath(__file__)
    try:
        fd = create_link(prog_fd, path, np.zeros(1, dtype=np.uint64), np.zeros(1, dtype=np.uint64), os.getpid())
    except LinkError as e:
        if e.errno in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS, errno.E2BIG):
            raise BpfcovError("this kernel has no uprobe_multi links with a pid filter (Linux 6.6 and later "
                              f"have them): {os.strerror(e.errno)}; --attach-method perf-event works from "
                              "Linux 5.15") from None
        raise
    os.close(fd)


def explain_errno(err: int) -> str:
    if err == ENOTSUPP:
        return "the kernel refused to probe an instruction (ENOTSUPP)"
    if err == errno.ESRCH:
        return "no such process"
    if err in (errno.EPERM, errno.EACCES):
        return "permission denied (bpfcov needs root, or CAP_BPF and CAP_PERFMON)"
    if err == errno.EMFILE:
        return "too many open files (each probe of --attach-method perf-event holds one; see ulimit -n)"
    return os.strerror(err)
