"""The data file, OUT/bpfcov.db: one run's coverage in SQLite.

Contract:
- A file is written whole to a temporary name beside it and renamed over the old one, so
  a reader sees the previous snapshot or the new one, never half of either, whatever
  happens to the writer (a crash, a full disk, SIGKILL).
- `meta` holds `format` = "bpfcov" and `schema`; a file without them is not ours and is
  refused with a one-line error, as is a corrupt one.
- Counts are stored per function and per line-probe, with everything the reports need to
  run without the binary (names, sizes, source locations, probe status).
"""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
import zlib
from typing import Any

import numpy as np

from bpfcov.data.model import ObjectCoverage, RunCoverage
from bpfcov.errors import BpfcovError
from bpfcov.gcpause import gc_paused
from bpfcov.probes.model import (
    FUNCTION_COLUMNS,
    FUNCTION_FIELDS,
    STORED_DEFAULTS,
    LineTable,
    ObjectIndex,
    function_from_record,
    function_record,
)

FORMAT = "bpfcov"
# 2: inlined instances (a function's inlined_* fields, and the runs of its instances).
# 3: each function's first hit (ns into the run), for the orderfile.
# 4: an object's line table as one row of zlib-compressed little-endian arrays
#    (line_arrays), not a row per line: a big binary has millions of lines, which took
#    seconds to read and write.
# Files of an older schema are read with the newer fields left empty.
SCHEMA = 4
# line_arrays' columns and the numpy type each array is stored in.
LINE_ARRAYS = (("address", "<u8"), ("offset", "<u8"), ("file", "<i4"), ("line", "<i4"), ("function", "<i4"),
               ("count", "<i8"))

_DDL = f"""
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE objects (id INTEGER PRIMARY KEY, path TEXT NOT NULL, build_id TEXT,
                      debug_file TEXT, warnings TEXT NOT NULL);
CREATE TABLE functions (object_id INTEGER NOT NULL, idx INTEGER NOT NULL, {FUNCTION_COLUMNS},
                        count INTEGER NOT NULL, inlined_count INTEGER NOT NULL,
                        first_hit_ns INTEGER NOT NULL, PRIMARY KEY (object_id, idx));
CREATE TABLE line_files (object_id INTEGER NOT NULL, idx INTEGER NOT NULL, path TEXT NOT NULL,
                         PRIMARY KEY (object_id, idx));
CREATE TABLE line_arrays (object_id INTEGER PRIMARY KEY, {", ".join(f"{c} BLOB NOT NULL" for c, _ in LINE_ARRAYS)});
"""


def write(path: str, run: RunCoverage) -> None:
    """Write `run` to `path` atomically."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".bpfcov-", suffix=".db.tmp")
    os.close(fd)
    try:
        db = sqlite3.connect(tmp)
        try:
            db.executescript(_DDL)
            _insert(db, run)
            db.commit()
        finally:
            db.close()
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, sqlite3.Error):
            why = "No space left on device" if "full" in str(e) else str(e)
            raise BpfcovError(f"cannot write {path}: {why}") from e
        if isinstance(e, OSError):
            raise BpfcovError(f"cannot write {path}: {e.strerror or e}") from e
        raise


def _insert(db: sqlite3.Connection, run: RunCoverage) -> None:
    meta = {
        "format": FORMAT, "schema": str(SCHEMA), "mode": run.mode, "command": json.dumps(run.command),
        "started": repr(run.started), "ended": "" if run.ended is None else repr(run.ended),
        "host": run.host, "kernel": run.kernel, "lines": "1" if run.lines else "0",
        "complete": "1" if run.complete else "0", "bpfcov_version": run.bpfcov_version,
        "stats": json.dumps(run.stats),
    }
    db.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
    for object_id, obj in enumerate(run.objects):
        ix = obj.index
        db.execute("INSERT INTO objects VALUES (?, ?, ?, ?, ?)",
                   (object_id, ix.path, ix.build_id, ix.debug_file, json.dumps(ix.warnings)))
        db.executemany(
            f"INSERT INTO functions VALUES ({', '.join('?' * (len(FUNCTION_FIELDS) + 5))})",
            ((object_id, i, *function_record(f), int(c), int(n), int(ns))
             for i, (f, c, n, ns) in enumerate(zip(ix.functions, obj.function_counts.tolist(),
                                                   obj.inlined().tolist(), obj.first_hit_ns().tolist()))))
        if ix.lines is not None:
            t = ix.lines
            db.executemany("INSERT INTO line_files VALUES (?, ?, ?)",
                           ((object_id, i, p) for i, p in enumerate(t.files)))
            counts = obj.line_counts if obj.line_counts is not None else np.zeros(len(t), dtype=np.int64)
            columns = {"address": t.address, "offset": t.offset, "file": t.file, "line": t.line,
                       "function": t.function, "count": counts}
            db.execute(f"INSERT INTO line_arrays VALUES ({', '.join('?' * (len(LINE_ARRAYS) + 1))})",
                       (object_id, *(zlib.compress(np.ascontiguousarray(columns[c], dtype=dtype).tobytes(), 1)
                                     for c, dtype in LINE_ARRAYS)))


@gc_paused()
def read(path: str) -> RunCoverage:
    """Read a data file; a missing, foreign or corrupt file raises BpfcovError."""
    if not os.path.isfile(path):
        raise BpfcovError(f"{path}: no such data file")
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return _load(db)
        finally:
            db.close()
    except sqlite3.DatabaseError as e:
        raise BpfcovError(f"{path}: not a bpfcov data file ({e})") from None
    except (KeyError, ValueError, TypeError, json.JSONDecodeError) as e:
        raise BpfcovError(f"{path}: corrupt bpfcov data file ({type(e).__name__}: {e})") from None


def _load(db: sqlite3.Connection) -> RunCoverage:
    try:
        meta = dict(db.execute("SELECT key, value FROM meta"))
    except sqlite3.OperationalError:
        raise sqlite3.DatabaseError("no bpfcov metadata") from None
    if meta.get("format") != FORMAT:
        raise sqlite3.DatabaseError("no bpfcov metadata")
    if int(meta["schema"]) > SCHEMA:
        raise ValueError(f"written by a newer bpfcov (schema {meta['schema']})")
    run = RunCoverage(
        mode=meta["mode"], command=json.loads(meta["command"]), started=float(meta["started"]),
        ended=float(meta["ended"]) if meta["ended"] else None, host=meta["host"], kernel=meta["kernel"],
        lines=meta["lines"] == "1", complete=meta["complete"] == "1", bpfcov_version=meta["bpfcov_version"],
        stats=json.loads(meta.get("stats") or "{}"))
    # A file of an older schema lacks the newer columns: they take the defaults of the record.
    present = {row[1] for row in db.execute("PRAGMA table_info(functions)")}
    columns = ", ".join(name if name in present else repr(STORED_DEFAULTS[name]) for name in FUNCTION_FIELDS)
    inlined_column = "inlined_count" if "inlined_count" in present else "0"
    first_hit_column = "first_hit_ns" if "first_hit_ns" in present else "0"
    for object_id, path, build_id, debug_file, warnings in db.execute(
            "SELECT id, path, build_id, debug_file, warnings FROM objects ORDER BY id"):
        functions = [function_from_record(values) for values in db.execute(
            f"SELECT {columns} FROM functions WHERE object_id = ? ORDER BY idx", (object_id,))]
        measured = db.execute(f"SELECT count, {inlined_column}, {first_hit_column} FROM functions "
                              "WHERE object_id = ? ORDER BY idx", (object_id,)).fetchall()
        counts, inlined, first_hits = (list(column) for column in zip(*measured)) if measured else ([], [], [])
        lines, line_counts = None, None
        if run.lines:
            files = [p for (p,) in db.execute(
                "SELECT path FROM line_files WHERE object_id = ? ORDER BY idx", (object_id,))]
            cols = _line_columns(db, object_id, int(meta["schema"]))
            lines = LineTable(files, *(cols[c] for c, _ in LINE_ARRAYS[:-1]))
            line_counts = cols["count"]
        index = ObjectIndex(path, build_id, functions, lines, json.loads(warnings), debug_file)
        run.objects.append(ObjectCoverage(index, np.array(counts, dtype=np.int64), line_counts,
                                          np.array(inlined, dtype=np.int64), np.array(first_hits, dtype=np.int64)))
    return run


def _line_columns(db: sqlite3.Connection, object_id: int, schema: int) -> dict[str, np.ndarray]:
    """An object's line table, column by column, in the types LineTable holds."""
    types = {"address": np.uint64, "offset": np.uint64, "file": np.int32, "line": np.int32,
             "function": np.int32, "count": np.int64}
    if schema < 4:  # a row per line
        rows = db.execute("SELECT address, offset, file, line, function, count FROM lines "
                          "WHERE object_id = ? ORDER BY address", (object_id,)).fetchall()
        cols: list[Any] = list(zip(*rows)) if rows else [[]] * len(LINE_ARRAYS)
        return {c: np.array(values, dtype=types[c]) for (c, _), values in zip(LINE_ARRAYS, cols)}
    row = db.execute(f"SELECT {', '.join(c for c, _ in LINE_ARRAYS)} FROM line_arrays WHERE object_id = ?",
                     (object_id,)).fetchone()
    if row is None:
        raise ValueError(f"object {object_id} has no line table")
    try:
        arrays = {c: np.frombuffer(zlib.decompress(blob), dtype=dtype).astype(types[c])
                  for (c, dtype), blob in zip(LINE_ARRAYS, row)}
    except zlib.error as e:
        raise ValueError(f"object {object_id}: its line table is damaged ({e})") from None
    if len({len(a) for a in arrays.values()}) != 1:
        raise ValueError(f"object {object_id}: its line columns differ in length")
    return arrays
