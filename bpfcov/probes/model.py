"""The project's vocabulary for probe points: what can be probed in one ELF object.

Everything downstream (the engine, the data file, the reports) speaks in these types.
Functions are few (thousands) and kept as dataclasses; line probes can number in the
hundreds of thousands, so they are kept as columns (numpy arrays) in `LineTable`.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import re
from dataclasses import dataclass, field

import numpy as np


class ProbeStatus(enum.StrEnum):
    ENTRY = "entry"            # probed at its first instruction
    MOVED = "moved"            # first instruction refused by uprobes; probed at the second
    UNMEASURED = "unmeasured"  # no safe place to probe: never to be reported as dead


@dataclass(frozen=True, slots=True)
class Function:
    name: str                  # the symbol as in the binary (mangled): its identity
    display_name: str          # demangled, for people
    address: int               # st_value: the virtual address of the entry
    offset: int                # file offset of the entry (what uprobes take)
    size: int
    file: str | None           # source file as the compiler recorded it, None without DWARF
    line: int | None
    end_line: int | None
    aliases: tuple[str, ...] = ()
    probe: ProbeStatus = ProbeStatus.ENTRY
    probe_offset: int | None = None  # file offset where the probe goes; None if unmeasured
    probe_note: str = ""             # why the probe was moved, or why it is unmeasured

    @property
    def measured(self) -> bool:
        return self.probe is not ProbeStatus.UNMEASURED

    def to_json(self) -> dict:
        """The record of `bpfcov symbols --json`: every field but where and why the probe moved."""
        record = dict(zip(FUNCTION_FIELDS, function_record(self)))
        for internal in ("probe_offset", "probe_note"):
            del record[internal]
        record["aliases"] = list(self.aliases)
        return record


# How a Function is stored, in the index cache and the data file alike: its fields in
# order, as plain values (aliases as JSON text, the probe status as its value), and each
# field's SQL column type. Derived from the dataclass, so a new field is stored everywhere.
FUNCTION_FIELDS = tuple(f.name for f in dataclasses.fields(Function))
_SQL_TYPES = {"str": "TEXT NOT NULL", "int": "INTEGER NOT NULL", "str | None": "TEXT", "int | None": "INTEGER",
              "tuple[str, ...]": "TEXT NOT NULL", "ProbeStatus": "TEXT NOT NULL"}
FUNCTION_COLUMNS = ", ".join(f"{f.name} {_SQL_TYPES[str(f.type)]}" for f in dataclasses.fields(Function))


def function_record(f: Function) -> tuple:
    return tuple(json.dumps(list(value)) if name == "aliases" else value.value if name == "probe" else value
                 for name, value in ((name, getattr(f, name)) for name in FUNCTION_FIELDS))


def function_from_record(values) -> Function:
    fields = dict(zip(FUNCTION_FIELDS, values))
    fields["aliases"] = tuple(json.loads(fields["aliases"]))
    fields["probe"] = ProbeStatus(fields["probe"])
    return Function(**fields)


@dataclass(slots=True)
class LineTable:
    """One probe per distinct `is_stmt` address of the DWARF line table.

    Columns of equal length, sorted by address. `file` indexes `files`; `function`
    indexes the owning object's `functions`.
    """

    files: list[str]
    address: np.ndarray   # uint64
    offset: np.ndarray    # uint64, file offsets
    file: np.ndarray      # int32
    line: np.ndarray      # int32
    function: np.ndarray  # int32

    def __len__(self) -> int:
        return len(self.address)

    @classmethod
    def empty(cls) -> LineTable:
        return cls([], *(np.zeros(0, dtype=t) for t in ("u8", "u8", "i4", "i4", "i4")))

    def to_json(self) -> list[dict]:
        files = self.files
        return [
            {"address": int(a), "offset": int(o), "file": files[f], "line": int(n), "function": int(fn)}
            for a, o, f, n, fn in zip(self.address, self.offset, self.file, self.line, self.function)
        ]


@dataclass(slots=True)
class ObjectIndex:
    """Every probe point of one ELF object."""

    path: str
    build_id: str | None
    functions: list[Function]
    lines: LineTable | None = None          # only when line probes were asked for
    warnings: list[str] = field(default_factory=list)
    debug_file: str | None = None            # separate debug info that was used, if any

    def to_json(self) -> dict:
        out = {
            "path": self.path,
            "build_id": self.build_id,
            "functions": [f.to_json() for f in self.functions],
        }
        if self.lines is not None:
            out["lines"] = self.lines.to_json()
        return out


def name_filter(include: list[str], exclude: list[str]):
    """A predicate on a function's names from --include / --exclude regular expressions:
    true when any name matches an include (or there are none) and no name an exclude."""
    inc = [re.compile(p) for p in include]
    exc = [re.compile(p) for p in exclude]

    def wanted(*names: str) -> bool:
        if inc and not any(r.search(n) for r in inc for n in names):
            return False
        return not any(r.search(n) for r in exc for n in names)

    return wanted
