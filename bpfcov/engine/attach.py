"""How probes are put in place: the best mechanism the running kernel has.

- `uprobe-multi` (Linux 6.6 and later): one link holds up to 2^20 probes of one file and
  one process. Removing some probes means replacing the link (tracer.py).
- `perf-event` (Linux 5.15 and later): one perf event and link per probe and process
  (perf_uprobe.py). Attaching costs a syscall pair per probe and a descriptor each; a
  probe is removed by closing its own link, but the kernel releases such links one at a
  time, 30-100 ms each on 6.18 (perf_uprobe_destroy holds event_mutex across grace periods):
  detaching 10,000 probes takes minutes. It suits hundreds or a few thousand probes.

The choice is asked of the kernel, by creating a link of each kind on a file no process
maps, never read from its version: distributions backport (RHEL 9's 5.14 has uprobe_multi).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bpfcov.errors import BpfcovError

if TYPE_CHECKING:
    import numpy as np

AUTO = "auto"
UPROBE_MULTI = "uprobe-multi"
PERF_EVENT = "perf-event"
CHOICES = (AUTO, UPROBE_MULTI, PERF_EVENT)


@dataclass(frozen=True)
class AttachMethod:
    name: str
    # The expected attach type the program is loaded with: a program loaded for
    # uprobe_multi links cannot be linked to a perf event, nor the other way round.
    program_attach_type: int
    max_probes_per_link: int
    # create_link(prog_fd, path, offsets, cookies, pid) -> link fd (0 for pid: every process)
    create_link: Callable[[int, str, np.ndarray, np.ndarray, int], int]
    # check_support(prog_fd): a BpfcovError naming what the kernel lacks
    check_support: Callable[[int], None]
    # Link closes worth having in flight at once (see tracer._LinkCloser).
    closes_at_once: int


def _methods() -> dict[str, AttachMethod]:
    # Imported here: they import numpy, which the CLI does not need before compiling starts.
    from bpfcov.engine import perf_uprobe, uprobe_multi
    return {
        UPROBE_MULTI: AttachMethod(UPROBE_MULTI, uprobe_multi.BPF_TRACE_UPROBE_MULTI,
                                   uprobe_multi.MAX_PROBES_PER_LINK, uprobe_multi.create_link,
                                   uprobe_multi.check_support, closes_at_once=128),
        PERF_EVENT: AttachMethod(PERF_EVENT, 0, 1, perf_uprobe.create_link, perf_uprobe.check_support,
                                 closes_at_once=4),
    }


@functools.cache
def choose(requested: str = AUTO) -> AttachMethod:
    """The method named, if this kernel has it, or for `auto` the best it has; a
    BpfcovError naming the missing feature otherwise. Asked once per process."""
    if requested not in CHOICES:
        raise BpfcovError(f"unknown attach method {requested!r}: choose one of {', '.join(CHOICES)}")
    methods = _methods()
    if requested != AUTO:
        _check(methods[requested])
        return methods[requested]
    try:
        _check(methods[UPROBE_MULTI])
        return methods[UPROBE_MULTI]
    except BpfcovError:
        pass
    try:
        _check(methods[PERF_EVENT])
    except BpfcovError as e:
        raise BpfcovError(f"this kernel has neither uprobe_multi links (Linux 6.6) nor perf-event links with a "
                          f"cookie (Linux 5.15): {e}") from None
    return methods[PERF_EVENT]


def _check(method: AttachMethod) -> None:
    prog_fd = _load_empty_program(method.program_attach_type)
    try:
        method.check_support(prog_fd)
    finally:
        os.close(prog_fd)


# BPF_PROG_LOAD of a two-instruction program (r0 = 0; exit) of type kprobe: enough to ask
# the kernel whether it links such a program, without compiling counter.c. (The syscall's
# number is repeated here rather than imported: uprobe_multi.py imports numpy.)
_SYS_BPF = 321
_BPF_PROG_LOAD = 5
_BPF_PROG_TYPE_KPROBE = 2
_RETURN_ZERO = bytes.fromhex("b700000000000000" "9500000000000000")


class _ProgLoadAttr(ctypes.Structure):
    _fields_ = [
        ("prog_type", ctypes.c_uint32),
        ("insn_cnt", ctypes.c_uint32),
        ("insns", ctypes.c_uint64),
        ("license", ctypes.c_uint64),
        ("log_level", ctypes.c_uint32),
        ("log_size", ctypes.c_uint32),
        ("log_buf", ctypes.c_uint64),
        ("kern_version", ctypes.c_uint32),
        ("prog_flags", ctypes.c_uint32),
        ("prog_name", ctypes.c_char * 16),
        ("prog_ifindex", ctypes.c_uint32),
        ("expected_attach_type", ctypes.c_uint32),
        ("_rest", ctypes.c_uint8 * 56),
    ]


def _load_empty_program(attach_type: int) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    insns = ctypes.create_string_buffer(_RETURN_ZERO, len(_RETURN_ZERO))
    license_ = ctypes.create_string_buffer(b"GPL")
    attr = _ProgLoadAttr()
    attr.prog_type = _BPF_PROG_TYPE_KPROBE
    attr.insn_cnt = len(_RETURN_ZERO) // 8
    attr.insns = ctypes.addressof(insns)
    attr.license = ctypes.addressof(license_)
    attr.prog_name = b"bpfcov_probe"
    attr.expected_attach_type = attach_type
    fd = libc.syscall(_SYS_BPF, _BPF_PROG_LOAD, ctypes.byref(attr), ctypes.sizeof(attr))
    if fd < 0:
        err = ctypes.get_errno()
        hint = " (bpfcov needs root, or CAP_BPF and CAP_PERFMON)" if err in (errno.EPERM, errno.EACCES) else ""
        raise BpfcovError(f"this kernel does not load a BPF kprobe program: {os.strerror(err)}{hint}")
    return fd
