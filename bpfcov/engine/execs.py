"""Which of the programs a trace execs are probed, and a tally of those that are not.

A test runner (`make test`, `ctest`, `cargo test`, a shell script) execs the programs that
do the work, and also shells, compilers and tools by the hundred. The programs worth
covering are, by default, the ones under the current folder (the project), plus those
the user names: the command given by its path, `--object`, `--include-path`. Programs in
the system's folders are never probed by default, even when the current folder contains
them (a run from `/`), because `make test` execs sh and cc1 hundreds of times.

The decision goes by the path the process sees: in a container, the container's path.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field

# Where a distribution keeps its own programs: shells, compilers (cc1 lives under
# /usr/lib/gcc), coreutils, interpreters.
SYSTEM_FOLDERS = ("/bin", "/sbin", "/lib", "/lib64", "/usr/bin", "/usr/sbin", "/usr/lib", "/usr/lib64",
                  "/usr/libexec", "/usr/games", "/opt/rh")

OUTSIDE = "outside the included folders"
EXCLUDED = "under an excluded folder"
SYSTEM = "system programs"
NO_FUNCTIONS = "no function symbols"
NOT_INDEXED = "could not be read"


def _under(path: str, folder: str) -> bool:
    return folder == "/" or path == folder or path.startswith(folder.rstrip("/") + "/")


def _folder(path: str) -> str:
    return os.path.realpath(os.path.abspath(path))


@dataclass
class ExecPolicy:
    """`include`: folders whose programs are probed (default: the current folder);
    `exclude`: folders whose programs never are; `all_execs`: every program but the
    excluded ones."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    all_execs: bool = False
    # Folders the user named: system folders among them are not left out by default.
    _explicit: bool = False
    skipped: Counter = field(default_factory=Counter)  # reason -> distinct programs
    probed: int = 0

    @classmethod
    def from_options(cls, include_paths=(), exclude_paths=(), all_execs: bool = False) -> ExecPolicy:
        include = tuple(_folder(p) for p in include_paths)
        return cls(include=include or (_folder(os.getcwd()),), exclude=tuple(_folder(p) for p in exclude_paths),
                   all_execs=all_execs, _explicit=bool(include))

    def reason_to_skip(self, path: str) -> str | None:
        """Why the program at `path` is not probed; None when it is."""
        if any(_under(path, folder) for folder in self.exclude):
            return EXCLUDED
        if self.all_execs:
            return None
        if not any(_under(path, folder) for folder in self.include):
            return OUTSIDE
        if not self._explicit and any(_under(path, folder) for folder in SYSTEM_FOLDERS):
            return SYSTEM
        return None

    def scope(self) -> str:
        """What the policy probes, in words for the line that announces a trace."""
        if self.all_execs:
            text = "every program exec'd"
        else:
            text = f"programs exec'd under {', '.join(self.include)}"
        if self.exclude:
            text += f" (not under {', '.join(self.exclude)})"
        return text

    def count_skipped(self, reason: str) -> None:
        self.skipped[reason] += 1

    def summary(self) -> dict:
        """For the run's stats: programs probed because they were exec'd, and why others were not."""
        return {"probed": self.probed, "skipped": dict(self.skipped)}


def describe(execs: dict) -> str:
    """The summary line's words for ExecPolicy.summary(): '3 programs probed; 41 skipped
    (38 system programs, 3 outside the included folders)'."""
    probed, skipped = execs.get("probed", 0), execs.get("skipped", {})
    text = f"{probed:,} exec'd program{'s' if probed != 1 else ''} probed"
    total = sum(skipped.values())
    if total:
        reasons = ", ".join(f"{n:,} {reason}" for reason, n in sorted(skipped.items(), key=lambda kv: -kv[1]))
        text += f", {total:,} skipped ({reasons})"
    return text
