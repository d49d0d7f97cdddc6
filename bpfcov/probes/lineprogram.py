"""A fast decoder for DWARF line-number programs (DWARF 2 to 5, DWARF spec section 6.2).

pyelftools decodes each opcode through `construct` and copies the state for every row,
which takes seconds on large objects (it dominated indexing). Here pyelftools still parses
the program *header* (file and directory tables, whose forms vary by version); the opcodes
are decoded by the loop below straight from the section bytes.
"""

from __future__ import annotations

from struct import unpack_from

DW_LNS_copy, DW_LNS_advance_pc, DW_LNS_advance_line, DW_LNS_set_file = 1, 2, 3, 4
DW_LNS_negate_stmt, DW_LNS_const_add_pc, DW_LNS_fixed_advance_pc = 6, 8, 9
DW_LNE_end_sequence, DW_LNE_set_address = 1, 2


class LineProgramError(ValueError):
    pass


def decode(data: bytes, start: int, end: int, header, address_size: int,
           out_address: list, out_file: list, out_line: list, out_stmt: list, out_end: list) -> None:
    """Append the rows of the program in data[start:end] to the out_* lists."""
    min_len = header["minimum_instruction_length"]
    default_is_stmt = bool(header["default_is_stmt"])
    line_base = header["line_base"]
    line_range = header["line_range"]
    opcode_base = header["opcode_base"]
    lengths = list(header["standard_opcode_lengths"])
    if line_range == 0 or end > len(data):
        raise LineProgramError("malformed line program header")
    const_add = ((255 - opcode_base) // line_range) * min_len
    address_format = {8: "<Q", 4: "<I"}.get(address_size)

    add_address, add_file, add_line = out_address.append, out_file.append, out_line.append
    add_stmt, add_end = out_stmt.append, out_end.append
    address, file, line, is_stmt = 0, 1, 1, default_is_stmt
    pos = start
    while pos < end:
        op = data[pos]
        pos += 1
        if op >= opcode_base:  # special opcode: advance both, then emit a row
            adjusted = op - opcode_base
            address += (adjusted // line_range) * min_len
            line += line_base + adjusted % line_range
            add_address(address); add_file(file); add_line(line); add_stmt(is_stmt); add_end(False)
        elif op == 0:  # extended opcode
            # LEB128 is decoded inline here and below: a helper call per operand costs a
            # third of the loop's time on large objects.
            length = 0
            shift = 0
            while True:
                b = data[pos]
                pos += 1
                length |= (b & 0x7F) << shift
                shift += 7
                if b < 0x80:
                    break
            if length == 0:
                continue
            sub = data[pos]
            next_pos = pos + length
            if sub == DW_LNE_end_sequence:
                add_address(address); add_file(file); add_line(line); add_stmt(is_stmt); add_end(True)
                address, file, line, is_stmt = 0, 1, 1, default_is_stmt
            elif sub == DW_LNE_set_address:
                if address_format is None or length - 1 != address_size:
                    raise LineProgramError("unsupported address size in line program")
                address = unpack_from(address_format, data, pos + 1)[0]
            pos = next_pos  # define_file, set_discriminator and vendor opcodes carry nothing we use
        elif op == DW_LNS_copy:
            add_address(address); add_file(file); add_line(line); add_stmt(is_stmt); add_end(False)
        elif op == DW_LNS_advance_pc or op == DW_LNS_set_file or op == DW_LNS_advance_line:
            value = 0
            shift = 0
            while True:
                b = data[pos]
                pos += 1
                value |= (b & 0x7F) << shift
                shift += 7
                if b < 0x80:
                    break
            if op == DW_LNS_advance_line:
                if b & 0x40:  # sign-extend the SLEB128
                    value -= 1 << shift
                line += value
            elif op == DW_LNS_advance_pc:
                address += value * min_len
            else:
                file = value
        elif op == DW_LNS_negate_stmt:
            is_stmt = not is_stmt
        elif op == DW_LNS_const_add_pc:
            address += const_add
        elif op == DW_LNS_fixed_advance_pc:
            address += unpack_from("<H", data, pos)[0]
            pos += 2
        else:  # other standard opcodes: skip their ULEB128 operands
            for _ in range(lengths[op - 1] if op - 1 < len(lengths) else 0):
                while data[pos] & 0x80:
                    pos += 1
                pos += 1
