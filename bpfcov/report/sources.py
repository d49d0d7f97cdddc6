"""Reading source files for reports, only from under --source-root, or from debuginfod.

Paths in DWARF come from the binary and are untrusted: a hostile binary can name
/etc/shadow as its source. Only a file whose real path (symlinks resolved) lies under the
source root is ever opened; anything else is shown by name alone. With
--debuginfod-sources, a file not readable here is asked of the debuginfod servers by the
build-id of an object built from it; what a server sends is text to show, which the
HTML report escapes like any other.
"""

from __future__ import annotations

import os


class SourceReader:
    MAX_BYTES = 8 << 20

    def __init__(self, root: str | None, debuginfod_sources: bool = False):
        self.root = os.path.realpath(root or os.getcwd())
        self.debuginfod_sources = debuginfod_sources
        self._cache: dict[str, list[str] | None] = {}
        self._fetched: dict[str, list[str] | None] = {}
        self._not_fetched: dict[str, str] = {}  # path -> why debuginfod gave nothing
        self._servers_failing: str | None = None  # a failure other than "not found" stops the asking

    def _inside(self, path: str) -> str | None:
        """The real path of `path` if it lies under the root, else None."""
        if not path or "\0" in path:
            return None
        candidate = path if os.path.isabs(path) else os.path.join(self.root, path)
        real = os.path.realpath(candidate)
        if real != self.root and not real.startswith(self.root + os.sep):
            return None
        return real

    def allowed(self, path: str) -> str | None:
        """The real path of `path` if it may be read and is a file, else None."""
        real = self._inside(path)
        return real if real is not None and os.path.isfile(real) else None

    def why_unreadable(self, path: str) -> str:
        if self._inside(path) is None:
            why = "it is outside --source-root, so it was not read"
        else:
            why = "it was not found under --source-root"
        if path in self._not_fetched:
            why += f", and debuginfod gave none: {self._not_fetched[path]}"
        return why

    def fetched_lines(self, path: str, build_ids: list[str]) -> list[str] | None:
        """The file's lines from the debuginfod servers (with --debuginfod-sources only),
        asking by the build-id of each object built from it until one has it."""
        if not self.debuginfod_sources or not build_ids:
            return None
        if path in self._fetched:
            return self._fetched[path]
        from bpfcov.probes import debuginfod
        text = None
        if not debuginfod.enabled():
            self._not_fetched[path] = "no server is named (DEBUGINFOD_URLS or --debuginfod)"
        elif self._servers_failing is not None:  # a report has hundreds of files: fail once, not for each
            self._not_fetched[path] = f"not asked, after {self._servers_failing}"
        else:
            for build_id in build_ids:
                try:
                    text = debuginfod.fetch_source(build_id, path)
                    self._not_fetched.pop(path, None)
                    break
                except debuginfod.DebuginfodError as e:
                    self._not_fetched[path] = str(e)
                    if not e.this_file_only:
                        self._servers_failing = str(e)
                        break
        self._fetched[path] = text
        return text

    def lines(self, path: str) -> list[str] | None:
        if path in self._cache:
            return self._cache[path]
        text = None
        real = self.allowed(path)
        if real is not None:
            try:
                if os.path.getsize(real) <= self.MAX_BYTES:
                    with open(real, "rb") as f:
                        text = f.read().decode("utf-8", "replace").splitlines()
            except OSError:
                text = None
        self._cache[path] = text
        return text

    def line_count(self, path: str) -> int | None:
        lines = self.lines(path)
        return None if lines is None else len(lines)
