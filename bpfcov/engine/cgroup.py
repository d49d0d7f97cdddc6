"""A cgroup v2 of its own for `bpfcov run`, so the BPF program counts exactly the command's
process tree: every process it forks or execs stays in the cgroup, and nothing outside it
is counted, while the program filters on bpf_get_current_cgroup_id() (the cgroup v2 id is
the inode number of its directory).
"""

from __future__ import annotations

import os
import subprocess
import tempfile

from bpfcov.errors import BpfcovError


def _cgroup2_mount() -> str | None:
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                if right.split(" ", 1)[0] == "cgroup2":
                    return left.split(" ")[4]
    except OSError:
        return None
    return None


class RunCgroup:
    """Create with a unique name; `procs_file` takes pids; `remove()` empties and deletes it."""

    def __init__(self):
        self._own_mount = None
        root = _cgroup2_mount()
        if root is None:
            # Hybrid or v1-only hosts may not mount the unified hierarchy; it still exists.
            self._own_mount = tempfile.mkdtemp(prefix="bpfcov-cgroup2-")
            result = subprocess.run(["mount", "-t", "cgroup2", "none", self._own_mount], capture_output=True)
            if result.returncode != 0:
                os.rmdir(self._own_mount)
                raise BpfcovError("no cgroup v2 hierarchy is mounted and mounting one failed; "
                                  "bpfcov run needs cgroup v2 to follow a command's processes")
            root = self._own_mount
        self.root = root
        self.path = os.path.join(root, f"bpfcov-{os.getpid()}")
        try:
            os.makedirs(self.path, exist_ok=True)
        except OSError as e:
            self._unmount()
            raise BpfcovError(f"cannot create a cgroup under {root}: {e.strerror}") from None
        self.id = os.stat(self.path).st_ino
        self.procs_file = os.path.join(self.path, "cgroup.procs")

    def pids(self) -> list[int]:
        try:
            with open(self.procs_file) as f:
                return [int(p) for p in f.read().split()]
        except OSError:
            return []

    def remove(self) -> None:
        """Move any process still inside back to the root cgroup, then delete ours."""
        if self.path is None:
            return
        for pid in self.pids():
            try:
                with open(os.path.join(self.root, "cgroup.procs"), "w") as f:
                    f.write(str(pid))
            except OSError:
                pass
        try:
            os.rmdir(self.path)
        except OSError:
            pass
        self.path = None
        self._unmount()

    def _unmount(self) -> None:
        if self._own_mount:
            subprocess.run(["umount", self._own_mount], capture_output=True)
            try:
                os.rmdir(self._own_mount)
            except OSError:
                pass
            self._own_mount = None
