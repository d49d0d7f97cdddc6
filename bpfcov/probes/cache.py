"""A per-object cache of probe indexes, so a second run on the same binary starts fast.

Entries live under $XDG_CACHE_HOME/bpfcov (default ~/.cache/bpfcov), one .npz file each,
keyed by the object's build-id (or, without one, its real path, size and mtime), whether
it carries its own symbols and DWARF (else which debug file it uses), and the options
that shape the index. numpy loads them with allow_pickle=False, so a planted file
cannot run code; an entry that fails to load or whose recorded key differs is deleted and
rebuilt, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from typing import TYPE_CHECKING

import numpy as np

from bpfcov.probes.model import LineTable, ObjectIndex, function_from_record, function_record

if TYPE_CHECKING:  # a report reads graphs through this module's cache and must not load pyelftools
    from bpfcov.probes.elf import ElfObject

# 3: probe sites follow the kernel's own instruction rules (VEX, EVEX, 66-prefixed branches),
# and avoid VEX instructions the kernel would misemulate. 4: functions as probes/model.py records them.
# 5: inlined instances (probes/inlines.py), and functions that exist only inlined.
# 6: a line's probe is its basic block's (probes/blocks.py); jump tables lead to inlined code.
SCHEMA = 6


def cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "bpfcov")


def key_for(obj: ElfObject, lines: bool, debug_file: str | None, share_blocks: bool = True) -> str:
    """The key of the index of the open object `obj` built with symbols and DWARF from `debug_file`."""
    build_id = obj.build_id()
    # The same build stripped or not, with or without its debug file, indexes differently.
    complete = obj.has_symtab() and obj.has_dwarf()
    st = os.stat(obj.path)
    real = os.path.realpath(obj.path)
    identity = f"build-id:{build_id}" if build_id else f"file:{real}:{st.st_size}:{st.st_mtime_ns}"
    debug = [debug_file, os.stat(debug_file).st_mtime_ns] if debug_file else None
    text = json.dumps([SCHEMA, identity, complete, debug, lines] + ([] if share_blocks else ["every line"]))
    return hashlib.sha256(text.encode()).hexdigest()


def _entry_path(key: str) -> str:
    return os.path.join(cache_dir(), key + ".npz")


def store(key: str, index: ObjectIndex) -> None:
    meta = {
        "key": key, "build_id": index.build_id, "warnings": index.warnings,
        "debug_file": index.debug_file,
        "functions": [function_record(f) for f in index.functions],
        "line_files": index.lines.files if index.lines is not None else None,
    }
    arrays = {"meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)}
    if index.lines is not None:
        for column in ("address", "offset", "file", "line", "function"):
            arrays["line_" + column] = getattr(index.lines, column)
    save_entry(_entry_path(key), arrays)


def save_entry(path: str, arrays: dict) -> None:
    """Write a cache entry of numpy arrays at `path`, whole or not at all."""
    try:
        os.makedirs(cache_dir(), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache_dir(), suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]  # numpy's stubs take the keywords for options
        os.replace(tmp, path)
    except OSError:
        pass  # a cache that cannot be written only costs time


def load(key: str) -> ObjectIndex | None:
    path = _entry_path(key)
    if not os.path.exists(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(bytes(data["meta"]).decode())
            if meta.get("key") != key:
                raise ValueError("key mismatch")
            functions = [function_from_record(values) for values in meta["functions"]]
            lines = None
            if meta["line_files"] is not None:
                lines = LineTable(meta["line_files"], *(data["line_" + column] for column in
                                                        ("address", "offset", "file", "line", "function")))
                if not len(lines.address) == len(lines.offset) == len(lines.file) == len(lines.line):
                    raise ValueError("ragged line columns")
        return ObjectIndex("", meta["build_id"], functions, lines, meta["warnings"], meta["debug_file"])
    except Exception:  # whatever is wrong with the entry, it is rebuilt
        try:
            os.unlink(path)
        except OSError:
            pass
        return None
