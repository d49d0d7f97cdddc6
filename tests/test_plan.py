"""Numbering probes and choosing functions by name: fast tests, no BPF."""

from __future__ import annotations

import numpy as np
from conftest import target

from bpfcov.engine.plan import plan_object
from bpfcov.probes.index import index_object
from bpfcov.probes.model import Function, name_filter


def test_an_entry_that_is_also_a_line_address_gets_one_probe():
    index = index_object(target("O0", "shapes"), lines=True, quiet=True)
    plan = plan_object(index, first_probe=100)
    assert len(np.unique(plan.offsets)) == plan.probe_count  # one probe per distinct offset
    measured = [i for i, f in enumerate(index.functions) if f.measured]
    assert (plan.function_probe[measured] >= 100).all()
    entry = next(i for i, f in enumerate(index.functions) if f.name == "factorial")
    shared = np.flatnonzero(index.lines.offset == index.functions[entry].probe_offset)
    assert len(shared) and (plan.line_probe[shared] == plan.function_probe[entry]).all()
    assert plan.first_probe + plan.probe_count - 1 == max(plan.function_probe.max(), plan.line_probe.max())


def test_include_and_exclude_match_any_name_of_a_function():
    wanted = name_filter(["^inv::"], ["Item::price"])
    assert wanted("_ZN3inv10make_itemsEv", "inv::make_items()")
    assert not wanted("_ZNK3inv4Item5priceEv", "inv::Item::price() const")
    assert not wanted("main", "main")
    assert name_filter([], [])("anything")


def test_symbols_json_record_is_the_stored_record_without_probe_internals():
    function = index_object(target("O0", "shapes"), quiet=True).functions[0]
    record = function.to_json()
    assert set(record) == {f for f in Function.__dataclass_fields__} - {"probe_offset", "probe_note", "inlined_offsets"}
    assert isinstance(record["aliases"], list) and isinstance(record["probe"], str)
