"""The DWARF line table of an object, as flat numpy columns.

Function source locations come from here too: the file and line of a function are those
of the line-table row at its entry address (what addr2line and gdb report), its last line
the greatest line of its own file among the rows inside it. This needs one pass over each
compilation unit's line program and no walk of the DIE tree, which is the slow part of
DWARF for large objects.
"""

from __future__ import annotations

import bisect
import os
from dataclasses import dataclass
from io import BytesIO
from typing import cast

import numpy as np
from elftools.common.exceptions import DWARFError, ELFError, ELFParseError
from elftools.elf.elffile import ELFFile

from bpfcov.probes.lineprogram import LineProgramError, decode


class DwarfUnreadable(Exception):
    """The DWARF is corrupt; the caller falls back to symbols alone."""


@dataclass(slots=True)
class LineRows:
    """Every row of every line program, sorted by address (stable within an address)."""

    files: list[str]
    address: np.ndarray   # uint64
    file: np.ndarray      # int32 index into files
    line: np.ndarray      # int32
    is_stmt: np.ndarray   # bool
    # A row that ends a sequence marks the first address after it; rows past an end marker
    # must not describe the addresses up to the next sequence.
    end_sequence: np.ndarray  # bool
    _address_list: list[int] | None = None

    def __len__(self) -> int:
        return len(self.address)

    def row_at(self, address: int) -> int | None:
        """Index of the row describing `address` (the first row at the last address at or
        before it that does not end a sequence), if any."""
        addresses = self.address_list
        i = bisect.bisect_right(addresses, address) - 1
        if i < 0:
            return None
        first = bisect.bisect_left(addresses, addresses[i])
        for j in range(first, i + 1):
            if not self.end_sequence[j]:
                return j
        return None

    def span(self, start: int, end: int) -> tuple[int, int]:
        """Row indexes [lo, hi) of the addresses in [start, end)."""
        addresses = self.address_list
        return bisect.bisect_left(addresses, start), bisect.bisect_left(addresses, end)

    @property
    def address_list(self) -> list[int]:
        # Searching a list of Python ints with bisect is far faster than np.searchsorted
        # with a Python int, which converts the whole uint64 array on every call.
        if self._address_list is None:
            self._address_list = self.address.tolist()
        return self._address_list


def _file_names(lineprog, comp_dir: str) -> list[str]:
    """Absolute source paths of a line program's file table, indexed as its rows index it."""
    version = lineprog.header.version
    dirs = [d.decode("utf-8", "replace") if isinstance(d, bytes) else str(d)
            for d in lineprog.header.include_directory]
    names = []
    for entry in lineprog.header.file_entry:
        name = entry.name.decode("utf-8", "replace") if isinstance(entry.name, bytes) else str(entry.name)
        d = entry.dir_index
        if version >= 5:
            directory = dirs[d] if d < len(dirs) else comp_dir
        else:
            directory = comp_dir if d == 0 else (dirs[d - 1] if d - 1 < len(dirs) else comp_dir)
        if not os.path.isabs(directory):
            directory = os.path.join(comp_dir, directory)
        names.append(os.path.normpath(os.path.join(directory, name)))
    if version < 5:
        names.insert(0, "")  # DWARF 2-4 number files from 1
    return names


def read_line_rows(elf: ELFFile) -> LineRows | None:
    """All line-table rows of `elf`, or None when it has no DWARF. Raises DwarfUnreadable."""
    try:
        if not elf.has_dwarf_info():
            return None
        dwarf = elf.get_dwarf_info(relocate_dwarf_sections=False)
        # pyelftools keeps the section in a BytesIO (typed as IO[bytes]).
        data = cast(BytesIO, dwarf.debug_line_sec.stream).getvalue() if dwarf.debug_line_sec is not None else b""
        files: list[str] = []
        file_ids: dict[str, int] = {}
        addr: list[int] = []
        fidx: list[int] = []
        line: list[int] = []
        stmt: list[bool] = []
        endseq: list[bool] = []
        for cu in dwarf.iter_CUs():
            top = cu.get_top_DIE()
            comp_dir_attr = top.attributes.get("DW_AT_comp_dir")
            comp_dir = comp_dir_attr.value.decode("utf-8", "replace") if comp_dir_attr else ""
            lineprog = dwarf.line_program_for_CU(cu)
            if lineprog is None:
                continue
            local = _file_names(lineprog, comp_dir)
            remap = []
            for name in local:
                if name not in file_ids:
                    file_ids[name] = len(files)
                    files.append(name)
                remap.append(file_ids[name])
            first = len(fidx)
            decode(data, lineprog.program_start_offset, lineprog.program_end_offset, lineprog.header,
                   cu["address_size"], addr, fidx, line, stmt, endseq)
            # File numbers are per compilation unit: make them indexes into `files`.
            fidx[first:] = [remap[f] if 0 <= f < len(remap) else -1 for f in fidx[first:]]
    except (DWARFError, ELFError, ELFParseError, LineProgramError, KeyError, IndexError, ValueError,
            AssertionError, UnicodeDecodeError, TypeError, AttributeError) as e:
        raise DwarfUnreadable(str(e) or type(e).__name__) from None
    except Exception as e:  # construct's own errors have no common base we can name
        if type(e).__module__.startswith("elftools"):
            raise DwarfUnreadable(str(e) or type(e).__name__) from None
        raise
    address = np.array(addr, dtype=np.uint64)
    order = np.argsort(address, kind="stable")
    return LineRows(
        files,
        address[order],
        np.array(fidx, dtype=np.int32)[order],
        np.array(line, dtype=np.int32)[order],
        np.array(stmt, dtype=np.bool_)[order],
        np.array(endseq, dtype=np.bool_)[order],
    )
