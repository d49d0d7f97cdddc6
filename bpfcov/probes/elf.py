"""Reading one ELF file: validation, executable segments, build-id, debug link, symbols.

Only what the probe index needs, read through pyelftools, with every malformed-input
failure turned into a BpfcovError naming the file.
"""

from __future__ import annotations

import functools
import os
import struct
from dataclasses import dataclass
from typing import cast

from elftools.common.exceptions import ELFError, ELFParseError
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import NoteSection, SymbolTableSection

from bpfcov.errors import BpfcovError

PF_X = 0x1


@dataclass(frozen=True, slots=True)
class Segment:
    vaddr: int
    memsz: int
    offset: int
    filesz: int

    def contains(self, address: int) -> bool:
        return self.vaddr <= address < self.vaddr + min(self.memsz, self.filesz)


@dataclass(frozen=True, slots=True)
class Symbol:
    name: str
    address: int
    size: int
    binding: str  # STB_GLOBAL, STB_WEAK, STB_LOCAL, ...


class ElfObject:
    """An open, validated x86-64 ELF file. Use as a context manager."""

    def __init__(self, path: str):
        self.path = path
        if not os.path.exists(path):
            raise BpfcovError(f"{path}: no such file")
        if os.path.isdir(path):
            raise BpfcovError(f"{path}: is a directory, not an ELF object")
        try:
            self._file = open(path, "rb")
        except OSError as e:
            raise BpfcovError(f"{path}: cannot open: {e.strerror}") from None
        try:
            self._check_header()
            self.elf = ELFFile(self._file)
            self.exec_segments = self._exec_segments()
        except (ELFError, ELFParseError, struct.error, ValueError) as e:
            self.close()
            raise BpfcovError(f"{path}: malformed ELF file ({e})") from None
        except BpfcovError:
            self.close()
            raise

    def _check_header(self) -> None:
        head = self._file.read(64)
        self._file.seek(0)
        if head[:4] != b"\x7fELF":
            raise BpfcovError(f"{self.path}: not an ELF file")
        if head[4] != 2:
            raise BpfcovError(f"{self.path}: 32-bit ELF objects are not supported (x86-64 only)")
        if head[5] != 1:
            raise BpfcovError(f"{self.path}: big-endian ELF objects are not supported (x86-64 only)")
        machine = struct.unpack_from("<H", head, 18)[0]
        if machine != 62:  # EM_X86_64
            raise BpfcovError(f"{self.path}: ELF machine {machine} is not supported (x86-64 only)")
        size = os.fstat(self._file.fileno()).st_size
        if size < 64:
            raise BpfcovError(f"{self.path}: truncated ELF file ({size} bytes)")
        # Linkers write the section header table last: a file cut short loses it first, and
        # pyelftools would only say that it cannot parse what is missing.
        shoff, = struct.unpack_from("<Q", head, 0x28)
        shentsize, shnum = struct.unpack_from("<HH", head, 0x3A)
        if shoff + shentsize * shnum > size:
            raise BpfcovError(f"{self.path}: truncated ELF file ({size:,} bytes, its section headers "
                              f"end at byte {shoff + shentsize * shnum:,})")
        self._size = size

    def _exec_segments(self) -> list[Segment]:
        segments = []
        for seg in self.elf.iter_segments():
            header = seg.header
            if header.p_type == "PT_LOAD" and header.p_flags & PF_X:
                if header.p_offset + header.p_filesz > self._size:
                    raise BpfcovError(f"{self.path}: truncated ELF file (a segment runs past its end)")
                segments.append(Segment(header.p_vaddr, header.p_memsz, header.p_offset, header.p_filesz))
        return segments

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> ElfObject:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def file_offset(self, address: int) -> int | None:
        """The file offset of a virtual address in an executable segment (kernel-facts.md)."""
        for seg in self.exec_segments:
            if seg.contains(address):
                return address - seg.vaddr + seg.offset
        return None

    def data_offset(self, address: int) -> int | None:
        """The file offset of a virtual address in any loaded segment's file contents
        (read-only data: jump tables), None outside them."""
        for vaddr, filesz, offset in self._loaded:
            if vaddr <= address < vaddr + filesz:
                return address - vaddr + offset
        return None

    @functools.cached_property
    def _loaded(self) -> list[tuple[int, int, int]]:
        """(vaddr, filesz, offset) of each loaded segment."""
        return [(s.header.p_vaddr, s.header.p_filesz, s.header.p_offset) for s in self.elf.iter_segments()
                if s.header.p_type == "PT_LOAD"]

    def read_at(self, offset: int, size: int) -> bytes:
        self._file.seek(offset)
        return self._file.read(size)

    @property
    def is_shared_object(self) -> bool:
        return self.elf.header.e_type == "ET_DYN"

    def build_id(self) -> str | None:
        for section in self.elf.iter_sections():
            if section.header.sh_type != "SHT_NOTE":
                continue
            for note in cast(NoteSection, section).iter_notes():
                if note.n_type == "NT_GNU_BUILD_ID":
                    return note.n_desc
        return None

    def debuglink(self) -> tuple[str, int] | None:
        """(file name, CRC32) from .gnu_debuglink, if present."""
        section = self.elf.get_section_by_name(".gnu_debuglink")
        if section is None:
            return None
        data = section.data()
        end = data.find(b"\0")
        if end <= 0:
            return None
        name = data[:end].decode("utf-8", "replace")
        crc_at = (end + 4) & ~3
        if crc_at + 4 > len(data):
            return None
        return os.path.basename(name), struct.unpack_from("<I", data, crc_at)[0]

    def declared_size(self) -> int:
        """The bytes the file's headers say it spans: more than its size means it was cut."""
        end = self.elf.header.e_shoff + self.elf.header.e_shentsize * self.elf.header.e_shnum
        for section in self.elf.iter_sections():
            if section.header.sh_type != "SHT_NOBITS":
                end = max(end, section.header.sh_offset + section.header.sh_size)
        return end

    def has_symtab(self) -> bool:
        return self.elf.get_section_by_name(".symtab") is not None

    def has_dwarf(self) -> bool:
        section = self.elf.get_section_by_name(".debug_info")
        return section is not None and section.header.sh_type != "SHT_NOBITS"

    def function_symbols(self) -> list[Symbol]:
        """Defined STT_FUNC / STT_GNU_IFUNC symbols, from .symtab, else from .dynsym."""
        table = self.elf.get_section_by_name(".symtab") or self.elf.get_section_by_name(".dynsym")
        if table is None:
            return []
        symbols = []
        try:
            for sym in cast(SymbolTableSection, table).iter_symbols():
                entry = sym.entry
                if entry.st_info.type not in ("STT_FUNC", "STT_LOOS") or entry.st_shndx == "SHN_UNDEF":
                    continue  # STT_LOOS is how pyelftools names STT_GNU_IFUNC (10)
                if not sym.name:
                    continue
                symbols.append(Symbol(sym.name, entry.st_value, entry.st_size, entry.st_info.bind))
        except (ELFError, ELFParseError, struct.error, UnicodeDecodeError) as e:
            raise BpfcovError(f"{self.path}: malformed symbol table ({e})") from None
        return symbols
