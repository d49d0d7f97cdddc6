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
    INLINED = "inlined"        # no out-of-line copy: probed where it was inlined
    NO_CODE = "no-code"        # inlined everywhere and computed away: nothing of it can run


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
    # Where the compiler inlined it (probes/inlines.py). Each probed instance has a probe at
    # its entry, then one at the start of each of its other address ranges: the compiler
    # may copy an instance's code onto several paths, and the entry lies on only one.
    out_of_line: bool = True               # False when only inlined copies exist (no symbol)
    inlined_offsets: tuple[tuple[int, ...], ...] = ()  # per probed instance: file offsets, entry first
    inlined_instances: int = 0             # instances with code, probed or not
    inlined_unmeasured: int = 0            # instances with no safe place to probe

    @property
    def measured(self) -> bool:
        """Whether bpfcov can tell if it ran: somewhere of it is probed."""
        return self.probe not in (ProbeStatus.UNMEASURED, ProbeStatus.NO_CODE) or bool(self.inlined_offsets)

    @property
    def fully_measured(self) -> bool:
        """Whether every place its code can run from is probed, so that no hit means it never ran."""
        entry_ok = self.probe in (ProbeStatus.ENTRY, ProbeStatus.MOVED, ProbeStatus.INLINED)
        return entry_ok and self.inlined_unmeasured == 0

    def to_json(self) -> dict:
        """The record of `bpfcov symbols --json`: every field but where and why the probe moved."""
        record = dict(zip(FUNCTION_FIELDS, function_record(self)))
        for internal in ("probe_offset", "probe_note"):
            del record[internal]
        record["aliases"] = list(self.aliases)
        del record["inlined_offsets"]
        return record


# How a Function is stored, in the index cache and the data file alike: its fields in
# order, as plain values (aliases as JSON text, the probe status as its value), and each
# field's SQL column type. Derived from the dataclass, so a new field is stored everywhere.
FUNCTION_FIELDS = tuple(f.name for f in dataclasses.fields(Function))
_SQL_TYPES = {"str": "TEXT NOT NULL", "int": "INTEGER NOT NULL", "str | None": "TEXT", "int | None": "INTEGER",
              "tuple[str, ...]": "TEXT NOT NULL", "tuple[tuple[int, ...], ...]": "TEXT NOT NULL",
              "ProbeStatus": "TEXT NOT NULL",
              "bool": "INTEGER NOT NULL"}
_TUPLES = tuple(f.name for f in dataclasses.fields(Function) if str(f.type).startswith("tuple["))
_BOOLS = tuple(f.name for f in dataclasses.fields(Function) if str(f.type) == "bool")
# The stored form of each field's default, for records written before the field existed.
STORED_DEFAULTS = {f.name: json.dumps(list(f.default)) if isinstance(f.default, tuple)
                   else f.default.value if isinstance(f.default, enum.Enum) else f.default
                   for f in dataclasses.fields(Function) if f.default is not dataclasses.MISSING}
FUNCTION_COLUMNS = ", ".join(f"{f.name} {_SQL_TYPES[str(f.type)]}" for f in dataclasses.fields(Function))


def function_record(f: Function) -> tuple:
    return tuple(json.dumps(list(value)) if name in _TUPLES else value.value if name == "probe" else value
                 for name, value in ((name, getattr(f, name)) for name in FUNCTION_FIELDS))


_TUPLE_AT = tuple(FUNCTION_FIELDS.index(name) for name in _TUPLES)
_BOOL_AT = tuple(FUNCTION_FIELDS.index(name) for name in _BOOLS)
_PROBE_AT = FUNCTION_FIELDS.index("probe")
_PROBE_STATUS = {status.value: status for status in ProbeStatus}


def function_from_record(values) -> Function:
    """The Function of a stored record (function_record's inverse); a record that is not
    one raises KeyError, ValueError or TypeError. By position: a data file has a record
    per function, and this is most of reading it."""
    values = list(values)
    for i in _TUPLE_AT:
        text = values[i]  # mostly "[]": skipping json.loads for it halves a big load
        values[i] = () if text == "[]" else tuple(tuple(v) if isinstance(v, list) else v for v in json.loads(text))
    for i in _BOOL_AT:
        values[i] = bool(values[i])
    values[_PROBE_AT] = _PROBE_STATUS[values[_PROBE_AT]]
    return Function(*values)


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
