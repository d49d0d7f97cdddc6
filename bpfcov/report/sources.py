"""Reading source files for reports, only from under --source-root.

Paths in DWARF come from the binary and are untrusted: a hostile binary can name
/etc/shadow as its source. Only a file whose real path (symlinks resolved) lies under the
source root is ever opened; anything else is shown by name alone.
"""

from __future__ import annotations

import os


class SourceReader:
    MAX_BYTES = 8 << 20

    def __init__(self, root: str | None):
        self.root = os.path.realpath(root or os.getcwd())
        self._cache: dict[str, list[str] | None] = {}

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
            return "it is outside --source-root, so it was not read"
        return "it was not found under --source-root"

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
