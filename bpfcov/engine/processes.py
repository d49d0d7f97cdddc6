"""What processes map: their executables and shared libraries, read from /proc."""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass

from bpfcov.errors import BpfcovError

_LDD_LINE = re.compile(r"(?:=>\s*)?(/\S+)\s+\(0x[0-9a-f]+\)")


def process_exists(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


def executable_of(pid: int) -> str:
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except FileNotFoundError:
        raise BpfcovError(f"no process with pid {pid}") from None
    except PermissionError:
        raise BpfcovError(f"cannot read /proc/{pid}/exe: permission denied (run as root)") from None
    except OSError as e:
        raise BpfcovError(f"cannot read /proc/{pid}/exe: {e.strerror} (a kernel thread?)") from None
    if exe.endswith(" (deleted)"):
        raise BpfcovError(f"process {pid} runs a deleted executable ({exe[:-10]}); it cannot be probed by path")
    return exe


@dataclass(frozen=True)
class Mapping:
    """A file mapped executable by a process."""

    path: str          # as the process sees it (in its own mount namespace)
    map_file: str      # /proc/PID/map_files/START-END: opens exactly the mapped file, from any namespace
    identity: tuple    # (device, inode) as /proc/PID/maps shows them: the same file gives the same


def executable_mappings(pid: int) -> list[Mapping]:
    """The files `pid` maps executable, one Mapping each, in address order."""
    found: dict[tuple, Mapping] = {}
    try:
        with open(f"/proc/{pid}/maps") as f:
            for line in f:
                parts = line.split(maxsplit=5)
                if len(parts) < 6 or "x" not in parts[1] or not parts[5].startswith("/"):
                    continue
                identity = (parts[3], parts[4])
                if identity not in found:
                    path = parts[5].rstrip("\n").removesuffix(" (deleted)")
                    # maps pads addresses to 8 digits; map_files names are unpadded.
                    start, end = (int(a, 16) for a in parts[0].split("-"))
                    found[identity] = Mapping(path, f"/proc/{pid}/map_files/{start:x}-{end:x}", identity)
    except OSError:
        return []
    return list(found.values())


def linked_libraries(executable: str) -> list[str]:
    """The shared libraries the dynamic loader would map for `executable`, resolved without
    running it (ld.so --list), so they can be probed before the program's first instruction."""
    try:
        out = subprocess.run(["ldd", executable], capture_output=True, text=True, timeout=30,
                             env={"LC_ALL": "C", "PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    except (OSError, subprocess.SubprocessError):
        return []
    libs = []
    for line in out.stdout.splitlines():
        m = _LDD_LINE.search(line)
        if m and os.path.isfile(m.group(1)):
            path = os.path.realpath(m.group(1))
            if path not in libs:
                libs.append(path)
    return libs
