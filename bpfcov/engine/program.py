"""Loading counter.c through bcc, and reading its counts without a syscall per probe.

One program serves every object and mode: it is compiled with the number of probe slots
and the mode as -D settings. `counts` is a BPF_F_MMAPABLE array mapped into this process,
so a snapshot of hundreds of thousands of counters is one numpy copy.
"""

from __future__ import annotations

import ctypes
import mmap
import os
from importlib import resources

import numpy as np

from bpfcov.errors import BpfcovError

BPF_TRACE_UPROBE_MULTI = 48


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


class CounterProgram:
    """The compiled BPF program with its maps. Close it to release every kernel object."""

    def __init__(self, slots: int, hit_mode: bool, cgroup_id: int | None = None, loader_hook: bool = False):
        bcc = _import_bcc()
        check_privileges()
        self.slots = max(1, slots)
        self.hit_mode = hit_mode
        source = resources.files("bpfcov.engine").joinpath("counter.c").read_text()
        cflags = [f"-DMAX_PROBES={self.slots}", "-Wno-unused-variable"]
        if hit_mode:
            # One 4-byte record per first hit; room for every probe's first hit at once means
            # no first hit is ever dropped, even if user space falls behind.
            need = self.slots * 16
            pages = 16
            while pages * mmap.PAGESIZE < need and pages < (1 << 16):
                pages *= 2
            cflags += ["-DHIT_MODE", f"-DRINGBUF_PAGES={pages}"]
        if cgroup_id is not None:
            cflags.append("-DCGROUP_FILTER")
        if loader_hook:
            cflags.append("-DLOADER_HOOK")
        try:
            self._bpf = bcc.BPF(text=source, cflags=cflags)
            self._fn = self._bpf.load_func("on_probe", bcc.BPF.KPROBE, attach_type=BPF_TRACE_UPROBE_MULTI)
            self._loader_fn = self._bpf.load_func("on_loader_event", bcc.BPF.KPROBE,
                                                  attach_type=BPF_TRACE_UPROBE_MULTI) if loader_hook else None
        except Exception as e:  # bcc raises bare Exceptions for compile and load failures
            raise BpfcovError(f"cannot load the BPF program: {str(e).splitlines()[0] if str(e) else e} "
                              f"(are kernel headers installed under /lib/modules/{os.uname().release}/build?)") from None
        if cgroup_id is not None:
            table = self._bpf["target_cgroup"]
            table[table.Key(0)] = table.Leaf(cgroup_id)
        counts_fd = self._bpf["counts"].map_fd
        size = self.slots * 8
        self._mmap = mmap.mmap(counts_fd, (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE * mmap.PAGESIZE,
                               mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.counts = np.frombuffer(self._mmap, dtype=np.uint64, count=self.slots)
        self._first_hits: list[int] = []
        self._loader_pids: list[int] = []
        if hit_mode:
            self._bpf["first_hits"].open_ring_buffer(self._on_first_hit)
        if loader_hook:
            self._bpf["loader_events"].open_ring_buffer(self._on_loader_event)

    @property
    def prog_fd(self) -> int:
        return self._fn.fd

    @property
    def loader_prog_fd(self) -> int | None:
        return self._loader_fn.fd if self._loader_fn is not None else None

    @property
    def has_events(self) -> bool:
        return self.hit_mode or self._loader_fn is not None

    def _on_first_hit(self, ctx, data, size) -> int:
        self._first_hits.append(ctypes.cast(data, ctypes.POINTER(ctypes.c_uint32))[0])
        return 0

    def _on_loader_event(self, ctx, data, size) -> int:
        self._loader_pids.append(ctypes.cast(data, ctypes.POINTER(ctypes.c_uint32))[0])
        return 0

    def wait_events(self, timeout_ms: int) -> tuple[list[int], list[int]]:
        """Block up to `timeout_ms` for reports: (probes hit for the first time, pids the
        loader hook stopped). Call from one thread only."""
        self._bpf.ring_buffer_poll(timeout_ms)
        hits, self._first_hits = self._first_hits, []
        pids, self._loader_pids = self._loader_pids, []
        return hits, pids

    def snapshot(self) -> np.ndarray:
        return self.counts.copy()

    def close(self) -> None:
        if self._bpf is None:
            return
        self.counts = None
        try:
            self._mmap.close()
        except (BufferError, ValueError):
            pass
        self._bpf.cleanup()
        self._bpf = None
