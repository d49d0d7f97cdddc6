"""The probe index against binutils as the oracle: nm for functions and sizes, addr2line
for source lines, objcopy for stripped copies with separate debug files."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess

import pytest
from conftest import bpfcov, target

from bpfcov.errors import BpfcovError
from bpfcov.probes.build_id import build_id_of
from bpfcov.probes.elf import ElfObject
from bpfcov.probes.index import index_object
from bpfcov.probes.insn import find_probe_site, kernel_refusal, refusal
from bpfcov.probes.model import ProbeStatus

ALL_TARGETS = ["shapes", "inventory", "threads", "forker", "host", "libshape.so", "plugin.so"]


def nm_functions(path: str) -> dict[int, set[str]]:
    """address -> names of defined text symbols (T/t/W/w/i), per nm."""
    out = subprocess.run(["nm", "--defined-only", "-S", path], capture_output=True, text=True, check=True).stdout
    by_address: dict[int, set[str]] = {}
    sizes: dict[int, int] = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 4:
            address, size, kind, name = parts
        elif len(parts) == 3:
            address, kind, name = parts
            size = "0"
        else:
            continue
        if kind in "TtWwi":
            by_address.setdefault(int(address, 16), set()).add(name)
            sizes[int(address, 16)] = max(sizes.get(int(address, 16), 0), int(size, 16))
    return by_address, sizes


@pytest.mark.parametrize("name", ALL_TARGETS)
@pytest.mark.parametrize("flavour", ["O0", "O2"])
def test_functions_equal_nm_text_symbols_with_aliases_folded(flavour, name):
    path = target(flavour, name)
    by_address, sizes = nm_functions(path)
    index = index_object(path, use_cache=False)
    symbols = [f for f in index.functions if f.out_of_line]  # the others exist only inlined
    ours = {f.address: {f.name, *f.aliases} for f in symbols}
    # nm lists _init/_fini and other section-start labels as text symbols too; only
    # STT_FUNC symbols are functions, so compare on the addresses both know of, and check
    # that nothing nm calls a sized function is missing from the index.
    missing = {a: n for a, n in by_address.items() if sizes[a] > 0 and a not in ours}
    assert not missing
    for f in symbols:
        assert {f.name, *f.aliases} <= by_address[f.address]
        assert f.size == sizes[f.address]


def gdb_lines(path: str, addresses: list[int]) -> list[tuple[str, int] | None]:
    """(file, line) gdb gives for each address, in one gdb session."""
    args = ["gdb", "-nx", "-batch"]
    for a in addresses:
        args += ["-ex", f"info line *{a:#x}"]
    out = subprocess.run(args + [path], capture_output=True, text=True, check=True).stdout
    answers = []
    for line in out.splitlines():
        m = re.match(r'Line (\d+) of "(.+?)"', line)
        if m:
            answers.append((m.group(2), int(m.group(1))))
        elif line.startswith("No line number information"):
            answers.append(None)
    assert len(answers) == len(addresses)
    return answers


@pytest.mark.parametrize("name", ["shapes", "inventory", "forker", "threads"])
def test_source_lines_equal_gdb_and_addr2line(name):
    path = target("O0", name)
    index = index_object(path, use_cache=False)
    # A function that exists only inlined is placed at its declaration, not at an address.
    located = [f for f in index.functions if f.file and f.out_of_line]
    assert len(located) >= 3
    by_gdb = gdb_lines(path, [f.address for f in located])
    by_addr2line = subprocess.run(["addr2line", "-e", path] + [hex(f.address) for f in located],
                                  capture_output=True, text=True, check=True).stdout.splitlines()
    agreed_with_addr2line = 0
    for f, gdb_answer, answer in zip(located, by_gdb, by_addr2line):
        assert gdb_answer is not None and gdb_answer[1] == f.line, f.name
        assert gdb_answer[0] == f.file or f.file.endswith("/" + gdb_answer[0]), f.name
        file, _, line = answer.partition(" ")[0].rpartition(":")
        # addr2line (binutils 2.40) names the wrong file for some DWARF 5 rows that gdb
        # reads right, so it is the second opinion here, and must agree on the line.
        assert int(line) == f.line, f.name
        agreed_with_addr2line += os.path.normpath(file) == f.file
        assert f.end_line >= f.line
    assert agreed_with_addr2line >= len(located) * 0.9


def test_functions_without_dwarf_have_no_file():
    index = index_object(target("O0", "shapes"), use_cache=False)
    by_name = {f.name: f for f in index.functions}
    assert by_name["locked_increment"].file is None  # written in assembly
    assert by_name["factorial"].file.endswith("sample_targets/shapes/shapes.c")


def test_lock_prefixed_entry_is_moved_to_the_second_instruction():
    index = index_object(target("O0", "shapes"), use_cache=False)
    f = next(f for f in index.functions if f.name == "locked_increment")
    assert f.probe is ProbeStatus.MOVED
    assert f.probe_offset == f.offset + 3  # `lock incl (%rdi)` is three bytes
    assert "lock" in f.probe_note


def test_instruction_check_follows_the_kernel_rules():
    assert refusal(bytes.fromhex("f0ff07")) == "lock prefix"
    assert refusal(bytes.fromhex("2e0f1f840000000000")) == "cs prefix"  # cs nopw padding
    assert refusal(bytes.fromhex("3effe0")) == "ds prefix"  # notrack jmp *%rax
    assert refusal(bytes.fromhex("c5f96ec6")) == "VEX opcode 0x6e"  # vmovd %esi,%xmm0: judged as outs
    # vpbroadcastb %esi,%ymm16 (EVEX): judged as jp, so accepted, then emulated as jp: never probed.
    assert kernel_refusal(bytes.fromhex("62e27d287ac6")) is None
    assert "branch" in refusal(bytes.fromhex("62e27d287ac6"))
    assert refusal(bytes.fromhex("c5fdfec1")) is None  # vpaddd: accepted and run as it is
    assert "FMA4" in refusal(bytes.fromhex("c4e3f96bc210"))  # vfmaddsd (libm's __fma_fma4)
    assert refusal(bytes.fromhex("66e800000000")) is not None  # call with an operand-size prefix
    assert refusal(bytes.fromhex("cc")) is not None  # int3 already there
    assert refusal(bytes.fromhex("f30f1efa")) is None  # endbr64
    assert refusal(bytes.fromhex("55")) is None  # push %rbp
    assert refusal(bytes.fromhex("64488b042528000000")) is None  # fs: is allowed
    # A refused branch cannot be stepped over: no safe point.
    assert find_probe_site(bytes.fromhex("3effe0"), 0x1000).address is None
    assert find_probe_site(bytes.fromhex("f0ff07f0ff07"), 0x1000).address is None


def test_cxx_names_are_demangled_and_constructor_aliases_folded():
    index = index_object(target("O0", "inventory"), use_cache=False)
    by_display = {f.display_name: f for f in index.functions}
    assert "inv::make_items()" in by_display
    ctor = next(f for f in index.functions if f.display_name.startswith("inv::Item::Item("))
    assert ctor.name.startswith("_ZN3inv4ItemC")
    assert {ctor.name, *ctor.aliases} >= {n.replace("C1E", "C2E") for n in [ctor.name]} | {ctor.name}
    assert any("C1E" in n for n in (ctor.name, *ctor.aliases)) and any("C2E" in n for n in (ctor.name, *ctor.aliases))
    assert "double inv::total<double>(std::vector<double, std::allocator<double> > const&)" in by_display


@pytest.mark.parametrize("mangling", ["legacy", "v0"])
def test_rust_binaries_come_out_demangled(mangling):
    index = index_object(target("rust", f"rustdemo-{mangling}"), use_cache=False)
    shown = {f.display_name for f in index.functions}
    assert {"main::main", "main::total_area", "main::geometry::sum_of_squares", "main::geometry::never_called",
            "<main::Square as main::Shape>::area"} <= shown
    prefix = "_ZN" if mangling == "legacy" else "_R"
    ours = [f for f in index.functions if f.display_name == "main::total_area"]
    assert ours[0].name.startswith(prefix)  # the mangled name stays the identity
    assert ours[0].file.endswith("sample_targets/rustdemo/main.rs")


def test_rust_names_are_demangled():
    from bpfcov.probes.demangle import demangle_all
    names = demangle_all(["_ZN7mycrate3foo17h0123456789abcdefE", "_RNvCs1234_7mycrate3foo", "main"])
    assert names["_ZN7mycrate3foo17h0123456789abcdefE"] == "mycrate::foo"
    assert names["_RNvCs1234_7mycrate3foo"].endswith("::foo")
    assert "main" not in names


def _comparable(index):
    return [(f.name, f.aliases, f.address, f.offset, f.size, f.file, f.line, f.end_line, f.probe)
            for f in index.functions]


def test_stripped_binary_with_debuglink_yields_the_same_index(tmp_path):
    original = target("O0", "inventory")
    debug = tmp_path / "inventory.debug"
    stripped = tmp_path / "inventory"
    subprocess.run(["objcopy", "--only-keep-debug", original, debug], check=True)
    subprocess.run(["objcopy", "--strip-all", f"--add-gnu-debuglink={debug}", original, stripped], check=True)
    full = index_object(original, use_cache=False)
    from_link = index_object(str(stripped), use_cache=False)
    assert from_link.debug_file == str(debug)
    assert _comparable(from_link) == _comparable(full)


def test_stripped_binary_with_build_id_debug_file_yields_the_same_index(tmp_path):
    original = target("O0", "shapes")
    full = index_object(original, use_cache=False)
    build_id = full.build_id
    root = tmp_path / "debugroot"
    (root / ".build-id" / build_id[:2]).mkdir(parents=True)
    debug_file = root / ".build-id" / build_id[:2] / f"{build_id[2:]}.debug"
    subprocess.run(["objcopy", "--only-keep-debug", original, debug_file],
                   check=True)
    stripped = tmp_path / "shapes"
    subprocess.run(["objcopy", "--strip-all", original, stripped], check=True)
    via_build_id = index_object(str(stripped), debug_dirs=(str(root),), use_cache=False)
    assert _comparable(via_build_id) == _comparable(full)


def test_debuglink_with_a_wrong_crc_is_not_used(tmp_path):
    original = target("O0", "libshape.so")  # a library: its .dynsym still names functions
    debug = tmp_path / "libshape.debug"
    subprocess.run(["objcopy", "--only-keep-debug", original, debug], check=True)
    stripped = tmp_path / "libshape.so"
    subprocess.run(["objcopy", "--strip-all", f"--add-gnu-debuglink={debug}", original, stripped], check=True)
    with open(debug, "ab") as f:
        f.write(b"changed")  # the CRC no longer matches
    index = index_object(str(stripped), use_cache=False)
    assert index.debug_file is None
    assert {f.name for f in index.functions} >= {"shape_sides", "shape_unused"}  # from .dynsym
    assert all(f.file is None for f in index.functions)  # no DWARF: no source


def test_line_table_maps_each_address_to_its_function():
    index = index_object(target("O0", "shapes"), lines=True, use_cache=False)
    t = index.lines
    assert len(t) > 50
    assert (t.address[1:] > t.address[:-1]).all()  # deduplicated, sorted
    for address, function in zip(t.address.tolist(), t.function.tolist()):
        f = index.functions[function]
        assert f.address <= address < f.address + max(f.size, 1)
    out = subprocess.run(["addr2line", "-e", target("O0", "shapes")] + [hex(a) for a in t.address.tolist()],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    for answer, file_idx, line in zip(out, t.file.tolist(), t.line.tolist()):
        path, _, number = answer.partition(" ")[0].rpartition(":")
        assert (os.path.normpath(path), int(number)) == (t.files[file_idx], line)


def test_cache_is_used_and_a_corrupt_entry_is_rebuilt(tmp_path, monkeypatch):
    from bpfcov.probes import cache
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = target("O0", "inventory")
    first = index_object(path, lines=True)
    entries = list((tmp_path / "bpfcov").glob("*.npz"))
    assert len(entries) == 1
    second = index_object(path, lines=True)
    assert _comparable(second) == _comparable(first)
    assert (second.lines.address == first.lines.address).all()
    entries[0].write_bytes(b"garbage")
    third = index_object(path, lines=True)
    assert _comparable(third) == _comparable(first)
    with ElfObject(path) as obj:
        key = cache.key_for(obj, True, None)
    assert cache.load(key) is not None  # rewritten whole


def test_symbols_json_contract(tmp_path):
    result = bpfcov("symbols", target("O0", "shapes"), "--json")
    data = json.loads(result.stdout)
    assert set(data) == {"path", "build_id", "functions"}
    f = next(f for f in data["functions"] if f["name"] == "factorial")
    assert set(f) == {"name", "display_name", "address", "offset", "size", "file", "line", "end_line",
                      "aliases", "probe", "out_of_line", "inlined_instances", "inlined_unmeasured"}
    assert f["probe"] == "entry"
    with_lines = json.loads(bpfcov("symbols", target("O0", "shapes"), "--json", "--lines").stdout)
    assert len(with_lines["lines"]) > 50


def test_symbols_table(tmp_path):
    out = bpfcov("symbols", target("O0", "inventory")).stdout
    assert "inv::make_items()" in out
    assert "functions" in out.splitlines()[-1]


# -- build-id, read without pyelftools -------------------------------------------------

def readelf_build_id(path: str) -> str | None:
    notes = subprocess.run(["readelf", "--notes", "--wide", path], capture_output=True, text=True, check=True).stdout
    found = re.search(r"Build ID: ([0-9a-f]+)", notes)
    return found.group(1) if found else None


def test_build_id_of_equals_readelf_on_real_objects():
    """glibc, libstdc++, the Python interpreter and the sqlite workload; and the
    interpreter's separate debug file (python3.11-dbg), which carries the same build-id."""
    python = os.path.realpath("/usr/bin/python3.11")
    libstdcxx = os.path.realpath(subprocess.run(["g++", "-print-file-name=libstdc++.so.6"], capture_output=True,
                                                text=True, check=True).stdout.strip())
    objects = [os.path.realpath("/lib/x86_64-linux-gnu/libc.so.6"), libstdcxx, python, target("sqlite", "workload")]
    for path in objects:
        assert build_id_of(path) == readelf_build_id(path), path
        with ElfObject(path) as obj:
            assert obj.build_id() == build_id_of(path), path
    assert None not in {build_id_of(p) for p in objects}
    assert len({build_id_of(p) for p in objects}) == len(objects)  # each its own: not one note read for all
    python_id = build_id_of(python)
    assert python_id is not None
    debug_file = f"/usr/lib/debug/.build-id/{python_id[:2]}/{python_id[2:]}.debug"
    assert build_id_of(debug_file) == readelf_build_id(debug_file) == python_id


def test_build_id_of_a_binary_linked_without_one_is_none(tmp_path):
    source = tmp_path / "main.c"
    source.write_text("int main(void) { return 0; }\n")
    binary = tmp_path / "no-build-id"
    subprocess.run(["gcc", "-Wl,--build-id=none", "-o", binary, source], check=True)
    assert readelf_build_id(str(binary)) is None
    assert build_id_of(str(binary)) is None


@pytest.mark.parametrize("case", ["missing", "directory", "not ELF", "32-bit"])
def test_build_id_of_bad_input_is_one_bpfcov_error(tmp_path, case):
    path, _ = bad_inputs(tmp_path)[case]
    with pytest.raises(BpfcovError) as failure:
        build_id_of(path)
    assert str(failure.value).startswith(path) and "\n" not in str(failure.value)


# -- bad input ---------------------------------------------------------------------------

def _elf_with(tmp_path, name: str, patch) -> str:
    data = bytearray(open(target("O0", "shapes"), "rb").read())
    patch(data)
    path = tmp_path / name
    path.write_bytes(bytes(data))
    return str(path)


def bad_inputs(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    truncated = tmp_path / "truncated"
    truncated.write_bytes(open(target("O0", "shapes"), "rb").read()[:3000])
    return {
        "missing": (str(tmp_path / "nope"), "no such file"),
        "directory": (str(tmp_path), "is a directory"),
        "not ELF": (str(text), "not an ELF file"),
        "32-bit": (_elf_with(tmp_path, "elf32", lambda d: d.__setitem__(4, 1)), "32-bit"),
        "ARM": (_elf_with(tmp_path, "arm", lambda d: struct.pack_into("<H", d, 18, 183)), "x86-64 only"),
        "truncated": (str(truncated), "truncated"),
    }


@pytest.mark.parametrize("case", ["missing", "directory", "not ELF", "32-bit", "ARM", "truncated"])
def test_bad_input_gives_one_line_error(tmp_path, case):
    path, expected = bad_inputs(tmp_path)[case]
    result = bpfcov("symbols", path, check=False)
    assert result.returncode == 1
    assert result.stderr.startswith("bpfcov: error: ")
    assert expected in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_corrupt_dwarf_falls_back_to_symbols_with_a_warning(tmp_path):
    original = target("O0", "shapes")
    copy = tmp_path / "shapes"
    shutil.copy(original, copy)
    out = subprocess.run(["readelf", "-S", "-W", original], capture_output=True, text=True, check=True).stdout
    line = next(row for row in out.splitlines() if ".debug_line " in row)
    fields = line.split("]", 1)[1].split()
    offset, size = int(fields[3], 16), int(fields[4], 16)
    data = bytearray(copy.read_bytes())
    data[offset:offset + size] = b"\xff" * size
    copy.write_bytes(bytes(data))
    result = bpfcov("symbols", copy, "--json", "--no-cache")
    assert "warning" in result.stderr and "DWARF" in result.stderr
    functions = json.loads(result.stdout)["functions"]
    assert any(f["name"] == "factorial" for f in functions)
    assert all(f["file"] is None for f in functions)
