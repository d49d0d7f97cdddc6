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


def test_a_probe_has_told_all_it_can_once_every_function_it_stands_for_ran():
    """On the -O2 inlines sample's plan: a function inlined in several places is answered
    by its first copy that runs, and its other probes go, but not a probe that also stands
    for a function not yet seen running."""
    from bpfcov.engine.answered import AnsweredProbes
    index = index_object(target("O2", "inlines"), quiet=True)
    plan = plan_object(index, first_probe=10)
    answered = AnsweredProbes()
    answered.add(plan)
    stands_for: dict[int, set[int]] = {}
    for f, p in enumerate(plan.function_probe.tolist()):
        if p >= 0:
            stands_for.setdefault(p, set()).add(f)
    for k, p in enumerate(plan.instance_probe.tolist()):
        stands_for.setdefault(p, set()).add(int(plan.instance_function[plan.instance_of_probe[k]]))
    inlined = next(f for f in set(plan.instance_function.tolist())
                   if (plan.instance_function[plan.instance_of_probe] == f).sum() > 1)
    copies = sorted(p for p, fs in stands_for.items() if inlined in fs)
    told = set(answered.hit([copies[0]]).tolist())
    ran = {f for f in stands_for[copies[0]]}
    assert told == {p for p, fs in stands_for.items() if fs <= ran}
    assert copies[0] in told and told - {copies[0]}
    assert answered.hit([copies[0]]).size == 0  # nothing new
    everything = answered.hit(sorted(stands_for))
    assert set(everything.tolist()) | told == set(stands_for)
