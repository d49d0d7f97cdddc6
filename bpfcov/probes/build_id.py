"""The GNU build-id of an ELF file, read with struct alone.

A report checks that each object's file is still the build that was traced before it
reads the object's reference graph from the cache; opening the file with pyelftools for
that (elf.py) cost more than the rest of the check, so this reads the section headers and
the notes directly. It finds the same note ElfObject.build_id does: the first
NT_GNU_BUILD_ID in a SHT_NOTE section.
"""

from __future__ import annotations

import struct

from bpfcov.errors import BpfcovError

_SHT_NOTE = 7
_NT_GNU_BUILD_ID = 3
_ELF64_LSB = b"\x7fELF\x02\x01"
_HEADER = struct.Struct("<16xHHIQQQIHHHHHH")   # Elf64_Ehdr after e_ident
_SECTION = struct.Struct("<IIQQQQIIQQ")        # Elf64_Shdr
_NOTE = struct.Struct("<III")                  # namesz, descsz, type


def build_id_of(path: str) -> str | None:
    """The build-id of the 64-bit little-endian ELF file at `path` in hex, or None when it
    has none; a file that cannot be read or is no such ELF file raises BpfcovError."""
    try:
        with open(path, "rb") as f:
            header = f.read(_HEADER.size)
            if len(header) < _HEADER.size or not header.startswith(_ELF64_LSB):
                raise BpfcovError(f"{path}: not a 64-bit little-endian ELF file")
            fields = _HEADER.unpack(header)
            shoff, shentsize, shnum = fields[5], fields[10], fields[11]
            if shoff == 0 or shentsize < _SECTION.size:
                return None
            if shnum == 0:  # more sections than e_shnum holds: the count is section 0's sh_size
                f.seek(shoff)
                shnum = _SECTION.unpack(f.read(_SECTION.size))[5]
            f.seek(shoff)
            table = f.read(shentsize * shnum)
            for i in range(len(table) // shentsize):
                _, sh_type, _, _, offset, size, _, _, align, _ = _SECTION.unpack_from(table, i * shentsize)
                if sh_type != _SHT_NOTE:
                    continue
                f.seek(offset)
                found = _build_id_in(f.read(size), 8 if align == 8 else 4)
                if found is not None:
                    return found
    except OSError as e:
        raise BpfcovError(f"{path}: cannot read: {e.strerror}") from None
    except struct.error:
        raise BpfcovError(f"{path}: damaged ELF section headers") from None
    return None


def _build_id_in(notes: bytes, align: int) -> str | None:
    """The descriptor of the first GNU build-id note in a note section's bytes, in hex."""
    at = 0
    while at + _NOTE.size <= len(notes):
        namesz, descsz, kind = _NOTE.unpack_from(notes, at)
        name_at = at + _NOTE.size
        desc_at = name_at + _aligned(namesz, align)
        if kind == _NT_GNU_BUILD_ID and notes[name_at:name_at + namesz] == b"GNU\0":
            return notes[desc_at:desc_at + descsz].hex()
        at = desc_at + _aligned(descsz, align)
    return None


def _aligned(n: int, align: int) -> int:
    return (n + align - 1) & ~(align - 1)
