"""A real debuginfod server (Debian's `debuginfod`) on loopback, for the tests and the bench.

It serves the debug files in one folder, from an index in a scratch folder, on a free port.
debuginfod 0.188 cannot be told which address to listen on: it listens on every interface,
and everything here reaches it at 127.0.0.1 only.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path


def only_debug_info(binary: str | Path, debug_file: Path) -> None:
    """Write `binary`'s debug info, alone, to `debug_file` (what a distribution ships)."""
    subprocess.run(["objcopy", "--only-keep-debug", str(binary), str(debug_file)], check=True)


def stripped_copy(binary: str | Path, copy: Path) -> None:
    """Write `binary` without a single symbol or debug section to `copy`."""
    subprocess.run(["strip", "--strip-all", "-o", str(copy), str(binary)], check=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _metrics(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as answer:
        text = answer.read().decode()
    values = {}
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name and not line.startswith("#"):
            try:
                values[name] = float(value)
            except ValueError:
                pass
    return values


class LocalDebuginfod:
    """`with LocalDebuginfod(folder, scratch) as server:` serves `folder` at server.url."""

    START_SECONDS = 120

    def __init__(self, folder: Path, scratch: Path):
        if shutil.which("debuginfod") is None:
            raise RuntimeError("debuginfod is not installed: run scripts/setup-system.sh")
        self.folder = folder
        self.scratch = scratch
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def __enter__(self) -> LocalDebuginfod:
        self.scratch.mkdir(parents=True, exist_ok=True)
        for _attempt in range(3):  # another process may take the free port first
            port = _free_port()
            self.url = f"http://127.0.0.1:{port}"
            log = open(self.scratch / "debuginfod.log", "ab")
            # -F: index ELF/DWARF files in the folder; -t 0 -g 0: one scan, no grooming.
            self.proc = subprocess.Popen(["debuginfod", "-F", "-p", str(port), "-t", "0", "-g", "0",
                                          "-d", str(self.scratch / "index.sqlite"), str(self.folder)],
                                         stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            log.close()
            if self._wait_indexed():
                return self
            self.__exit__()
        raise RuntimeError(f"debuginfod did not start: see {self.scratch / 'debuginfod.log'}")

    def _wait_indexed(self) -> bool:
        """Until the server has walked the folder and scanned every file in it. A scan's
        queue can read empty for an instant while a file passes to a scanner, so the
        state must hold twice in a row."""
        assert self.proc is not None
        deadline = time.monotonic() + self.START_SECONDS
        settled = 0
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                m = _metrics(self.url)
            except OSError:
                m = {}
            done = (m.get("ready") == 1 and m.get('thread_work_total{role="traverse"}', 0) >= 1
                    and m.get('thread_work_pending{role="scan"}', 1) == 0
                    and m.get('thread_busy{role="scan"}', 1) == 0)
            settled = settled + 1 if done else 0
            if settled == 2:
                return True
            time.sleep(0.2)
        return False

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
