"""What `bpfcov symbols --json --refs` adds to each function: whether the object's static
roots reach it, what it refers to, and what refers to it, by name.

A PLT entry or a GOT slot is only a way through: a call through one is named by the
function the slot holds. A stretch of data no symbol bounds is named by its section and
offset (`.rodata+0x40`).
"""

from __future__ import annotations

from bpfcov.probes.model import ObjectIndex
from bpfcov.prune.graph import ReferenceGraph
from bpfcov.prune.graph_reader import reference_graph

_PASSAGES = ("plt", "got")


def _through_passages(graph: ReferenceGraph, successors: list[set[int]], node: int) -> set[int]:
    """The nodes `node` refers to, each PLT entry and GOT slot replaced by what it refers to."""
    found: set[int] = set()
    stack = list(successors[node])
    seen = set(stack)
    while stack:
        n = stack.pop()
        if graph.nodes[n].kind in _PASSAGES:
            for m in successors[n] - seen:
                seen.add(m)
                stack.append(m)
        elif n != node:
            found.add(n)
    return found


def function_references(path: str, index: ObjectIndex) -> list[dict]:
    """Per function of `index` (read from `path`): {reachable, refs, referenced_by}.
    `reachable` is null for a function with no out-of-line copy (nothing to remove)."""
    graph = reference_graph(path, index)
    static = graph.reachable_from(list(graph.roots))
    back = graph.referrers()
    records: list[dict] = []
    for fi in range(len(index.functions)):
        node = graph.node_of_function.get(fi)
        if node is None:
            records.append({"reachable": None, "refs": [], "referenced_by": []})
            continue
        refs = _through_passages(graph, graph.refs, node)
        referrers = _through_passages(graph, back, node)
        records.append({"reachable": bool(static[node]),
                        "refs": sorted(graph.nodes[n].name for n in refs),
                        "referenced_by": sorted(graph.nodes[n].name for n in referrers)})
    return records
