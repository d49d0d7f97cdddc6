"""Finding separate debug information for a stripped object.

On local disk first, by two conventions, tried in this order (as gdb does):
- by build-id: <root>/.build-id/xx/rest.debug, where the file's own build-id must match;
- by .gnu_debuglink: a file name plus CRC32, looked for next to the object, in .debug/
  beside it, and under <root>/<object's directory>/; the CRC must match.
Roots are the user's --debug-dir folders, then /usr/lib/debug. Then, when servers are
named (DEBUGINFOD_URLS or --debuginfod), from debuginfod by build-id (debuginfod.py).
"""

from __future__ import annotations

import os
import zlib

from bpfcov.errors import BpfcovError
from bpfcov.probes import debuginfod
from bpfcov.probes.elf import ElfObject
from bpfcov.progress import Progress

DEFAULT_ROOTS = ("/usr/lib/debug",)


def _crc32(path: str) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            crc = zlib.crc32(chunk, crc)
    return crc & 0xFFFFFFFF


def _build_id_of(path: str) -> str | None:
    try:
        with ElfObject(path) as obj:
            return obj.build_id()
    except BpfcovError:
        return None


def find_debug_file(obj: ElfObject, extra_roots: tuple[str, ...] = ()) -> str | None:
    """Path of a verified separate debug file for `obj`, or None."""
    roots = tuple(extra_roots) + DEFAULT_ROOTS
    build_id = obj.build_id()
    if build_id and len(build_id) > 2:
        for root in roots:
            candidate = os.path.join(root, ".build-id", build_id[:2], build_id[2:] + ".debug")
            if os.path.isfile(candidate) and _build_id_of(candidate) == build_id:
                return candidate
    link = obj.debuglink()
    if link is None:
        return None
    name, crc = link
    here = os.path.dirname(os.path.realpath(obj.path))
    candidates = [os.path.join(here, name), os.path.join(here, ".debug", name)]
    for root in roots:
        candidates.append(os.path.join(root, here.lstrip("/"), name))
        candidates.append(os.path.join(root, name))
    own = os.path.realpath(obj.path)
    for candidate in candidates:
        if os.path.isfile(candidate) and os.path.realpath(candidate) != own:
            try:
                if _crc32(candidate) == crc:
                    return candidate
            except OSError:
                continue
    return None


def locate_debug_file(obj: ElfObject, extra_roots: tuple[str, ...] = (), progress: Progress | None = None,
                      ask_debuginfod: bool = True) -> tuple[str | None, str | None]:
    """(the separate debug file `obj` needs, or None; why debuginfod gave none, when asked).
    An object with its own symbols and DWARF needs none."""
    if obj.has_symtab() and obj.has_dwarf():
        return None, None
    local = find_debug_file(obj, extra_roots)
    if local is not None or not ask_debuginfod or not debuginfod.enabled():
        return local, None
    build_id = obj.build_id()
    if not build_id:
        return None, "it has no build-id to ask debuginfod for its debug info"
    try:
        return debuginfod.fetch_debuginfo(build_id, progress), None
    except debuginfod.DebuginfodError as e:
        return None, f"debuginfod: {e}"
