"""The pruning plan (bpfcov/prune/): the reference graph against the linker's own
reachability, dominator trees against their definition, retained bytes on a target whose
answer is known, and the plan in coverage.json and in a real browser."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import BUILD, bpfcov, coverage_json, target
from hypothesis import given, settings
from hypothesis import strategies as st

from bpfcov.prune.dominators import dominator_tree
from bpfcov.prune.graph_reader import _relr_locations

SECTIONS = BUILD / "sections"
LIBC = "/usr/lib/x86_64-linux-gnu/libc.so.6"

# Functions where bpfcov and the linker may disagree, and why. None today: the list is
# here so that a difference that appears must be explained to pass.
EXPLAINED: dict[str, dict[str, str]] = {"workload": {}, "inventory": {}}


# -- the linker's reachability as the oracle ---------------------------------------------

def function_addresses(binary: Path) -> dict[str, int]:
    out = subprocess.run(["readelf", "-sW", str(binary)], capture_output=True, text=True, check=True).stdout
    return {f[7]: int(f[1], 16) for f in (line.split() for line in out.splitlines())
            if len(f) >= 8 and f[3] == "FUNC" and f[6] != "UND"}


def symbol_names(binary: Path) -> set[str]:
    return set(function_addresses(binary))


def linker_removed(name: str) -> set[str]:
    """The functions of the plain build that `--gc-sections` removed, read from the list
    `--print-gc-sections` wrote: `.text.NAME` held NAME, `.text.unlikely.NAME` NAME or
    its cold part NAME.cold, a COMDAT's `[GROUP]` suffix aside."""
    plain = function_addresses(SECTIONS / name)
    removed: set[str] = set()
    text = (SECTIONS / f"{name}-gc.removed").read_text()
    for section in re.findall(r"removing unused section '([^']+)'", text):
        section = section.split("[")[0]
        for prefix in (".text.unlikely.", ".text.startup.", ".text.hot.", ".text.exit.", ".text."):
            if section.startswith(prefix):
                stem = section[len(prefix):]
                removed |= {stem, f"{stem}.cold"} & set(plain)
                break
    # A section's other names for the same code (a C++ destructor's D1 and D2) went with it.
    addresses = {plain[n] for n in removed}
    return {n for n, a in plain.items() if a in addresses}


def bpfcov_unreachable(binary: Path) -> tuple[set[str], list[dict]]:
    """(names of every function `symbols --refs` calls unreachable, all its records)."""
    record = json.loads(bpfcov("symbols", "--json", "--refs", "--no-cache", binary).stdout)
    unreachable = {n for f in record["functions"] if f["reachable"] is False for n in (f["name"], *f["aliases"])}
    return unreachable, record["functions"]


@pytest.mark.parametrize("name, at_least", [("workload", 200), ("inventory", 3)],
                         ids=["sqlite", "cpp"])
def test_unreachable_functions_are_the_ones_the_linker_removes(name, at_least):
    for built in (SECTIONS / name, SECTIONS / f"{name}-gc"):
        if not built.exists():
            pytest.fail(f"{built} is missing: build the sample targets with `make targets`")
    removed = linker_removed(name)
    # The list is read right: it names exactly the functions the gc'd build lacks.
    assert removed == symbol_names(SECTIONS / name) - symbol_names(SECTIONS / f"{name}-gc")
    assert len(removed) >= at_least
    ours, functions = bpfcov_unreachable(SECTIONS / name)
    by_function = [({f["name"], *f["aliases"]}, f["reachable"]) for f in functions if f["reachable"] is not None]
    said = [names for names, reachable in by_function if not reachable]
    truly = [names for names, _ in by_function if names & removed]
    hits = [names for names in said if names & removed]
    precision, recall = len(hits) / max(1, len(said)), len(hits) / max(1, len(truly))
    assert precision >= 0.95 and recall >= 0.95, (precision, recall)
    differences = {min(n) for n in said if not n & removed} | {min(n) for n in truly if not n & ours}
    unexplained = differences - set(EXPLAINED[name])
    assert not unexplained, f"bpfcov and the linker disagree on {sorted(unexplained)}"


def test_packed_relative_relocations_decode_as_readelf_lists_them():
    """glibc 2.36 packs its relative relocations (SHT_RELR): readelf decodes them too."""
    out = subprocess.run(["readelf", "-rW", LIBC], capture_output=True, text=True, check=True).stdout
    listed = out.split("Relocation section '.relr.dyn'")[1].split("Relocation section")[0]
    expected = [int(word, 16) for word in re.findall(r"^([0-9a-f]{16})$", listed, re.M)]
    from elftools.elf.elffile import ELFFile
    with open(LIBC, "rb") as f:
        section = ELFFile(f).get_section_by_name(".relr.dyn")
        entries = np.frombuffer(section.data(), dtype="<u8").tolist()
    assert len(expected) > 1000
    assert _relr_locations(entries) == expected


def test_libc_constructors_and_exports_are_reachable():
    """The real libc: its .init_array (relocated only through SHT_RELR) and its exports
    keep their code alive."""
    from elftools.elf.elffile import ELFFile
    with open(LIBC, "rb") as f:
        elf = ELFFile(f)
        array = elf.get_section_by_name(".init_array")
        constructors = set(np.frombuffer(array.data(), dtype="<u8").tolist())
        dynsym = elf.get_section_by_name(".dynsym")
        exported = {s.entry.st_value for s in dynsym.iter_symbols()
                    if s.entry.st_shndx != "SHN_UNDEF" and s.entry.st_info.type == "STT_FUNC"
                    and s.entry.st_info.bind != "STB_LOCAL" and s.entry.st_other.visibility == "STV_DEFAULT"}
    _, functions = bpfcov_unreachable(Path(LIBC))
    reachable = {f["address"]: f["reachable"] for f in functions if f["reachable"] is not None}
    assert constructors and constructors <= set(reachable)
    assert all(reachable[a] for a in constructors)
    assert all(reachable[a] for a in exported if a in reachable)
    # libc is not linked with --gc-sections: some dead code is expected, little.
    assert sum(not r for r in reachable.values()) < 0.05 * len(reachable)


# -- dominators against their definition --------------------------------------------------

def dominators_by_definition(successors: list[list[int]], start: int) -> dict[int, set[int]]:
    """d dominates n when n is unreachable from start once d is removed."""
    def reachable(removed: int | None) -> set[int]:
        seen, stack = {start} if start != removed else set(), [start] if start != removed else []
        while stack:
            for t in successors[stack.pop()]:
                if t not in seen and t != removed:
                    seen.add(t)
                    stack.append(t)
        return seen
    everything = reachable(None)
    return {n: {d for d in everything if d == n or n not in reachable(d)} for n in everything}


@settings(max_examples=200, deadline=None)
@given(st.integers(2, 12).flatmap(lambda n: st.lists(st.lists(st.integers(0, n - 1), max_size=4),
                                                       min_size=n, max_size=n)))
def test_dominator_tree_matches_the_definition(successors):
    tree = dominator_tree(successors, 0)
    expected = dominators_by_definition(successors, 0)
    for node, doms in expected.items():
        chain = {node}
        while node != 0:
            node = int(tree.idom[node])
            chain.add(node)
        assert chain == doms
    assert all(tree.idom[n] == -1 for n in range(len(successors)) if n not in expected)


# -- retained bytes and classes, where the answer is known (sample_targets/prune) ----------

def sizes(binary: str) -> dict[str, int]:
    out = subprocess.run(["readelf", "-sW", binary], capture_output=True, text=True, check=True).stdout
    return {f[7]: int(f[2]) for f in (line.split() for line in out.splitlines())
            if len(f) >= 8 and f[3] in ("FUNC", "OBJECT") and f[2].isdigit()}


def test_symbols_refs_on_the_known_target():
    unreachable, functions = bpfcov_unreachable(Path(target("O0", "prune")))
    assert unreachable == {"orphan_root", "orphan_leaf"}
    by_name = {f["name"]: f for f in functions}
    assert "handlers" in by_name["say_goodbye"]["referenced_by"]
    assert {"report", "dispatch", "wide_report"} <= set(by_name["main"]["refs"])
    assert by_name["cold_only_helper"]["refs"] == ["cold_table", "shared_helper"]
    assert by_name["shared_helper"]["referenced_by"] == ["cold_only_helper", "never_called_branch"]


@pytest.mark.parametrize("args", [[], ["wide"]], ids=["plain", "wide"])
def test_classes_and_retained_bytes_on_the_known_target(bpf, tmp_path, args):
    binary = target("O0", "prune")
    bpfcov("run", "-q", "-o", tmp_path, "--format", "json,html", "--", binary, *args)
    size = sizes(binary)
    expected = {
        "wide_report": ("cold", size["wide_report"] + size["wide_format"]),
        "wide_format": ("dead-only", size["wide_format"]),
        "cold_report": ("cold", size["cold_report"] + size["cold_only_helper"] + size["cold_table"]),
        "cold_only_helper": ("dead-only", size["cold_only_helper"] + size["cold_table"]),
        "shared_helper": ("dead-only", size["shared_helper"]),
        "rare_path": ("cold", size["rare_path"] + size["never_called_branch"] + size["deep_dead"]),
        "never_called_branch": ("dead-only", size["never_called_branch"] + size["deep_dead"]),
        "deep_dead": ("dead-only", size["deep_dead"]),
        "say_goodbye": ("cold", size["say_goodbye"]),
        "orphan_root": ("unreachable", size["orphan_root"] + size["orphan_leaf"]),
        "orphan_leaf": ("unreachable", size["orphan_leaf"]),
    }
    if args == ["wide"]:
        del expected["wide_report"], expected["wide_format"]
    report = coverage_json(tmp_path)
    planned = {f["name"]: (f["prune"]["class"], f["prune"]["retained_bytes"])
               for f in report["objects"][0]["functions"] if f["prune"] is not None}
    assert planned == expected
    for f in report["objects"][0]["functions"]:
        assert (f["prune"] is None) == (f["status"] != "unhit")
    assert report["totals"]["unreachable_bytes"] == size["orphan_root"] + size["orphan_leaf"]
    page = (tmp_path / "html" / "index.html").read_text()
    assert "Pruning plan" in page and "orphan_root" in page


def test_pruning_plan_and_class_colours_in_chromium(bpf, tmp_path):
    """The plan's section renders, and #by-class recolours the treemap by class."""
    from PIL import Image
    from test_reports import chromium
    bpfcov("run", "-q", "-o", tmp_path, "--format", "html", "--", target("O0", "prune"))
    page = (tmp_path / "html" / "index.html").as_uri()

    def pixels(url: str, name: str) -> np.ndarray:
        shot = tmp_path / name
        subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,1400",
                        f"--screenshot={shot}", url], capture_output=True, timeout=120, check=True)
        return np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3)

    def count(image: np.ndarray, colour: int) -> int:
        return int((image == [colour >> 16, colour >> 8 & 0xFF, colour & 0xFF]).all(axis=1).sum())

    unreachable, cold, never_executed = 0x7b2d8e, 0xe69b22, 0xd9534f
    by_status = pixels(page, "status.png")
    by_class = pixels(page + "#by-class", "class.png")
    # The plan's badges and cards use the class colours on both; only the class view
    # paints whole tiles with them (orphan_root's alone is thousands of pixels).
    assert count(by_class, unreachable) > count(by_status, unreachable) + 5_000
    assert count(by_class, cold) > count(by_status, cold) + 5_000
    assert count(by_status, never_executed) > 5_000
