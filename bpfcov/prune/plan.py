"""A pruning plan for one object: for each never-executed function, a class and the bytes
its removal frees, and the cuts that free most.

Classes, from the reference graph (graph.py) and what ran:

- `unreachable`: no path leads to it from a static root or from any function that ran
  (or may have: unmeasured ones count as run). The linker's --gc-sections could drop it
  today.
- `dead-only`: reachable, but only through never-executed functions (and data only they
  use). Cut the cluster's root and it goes too.
- `cold`: referenced by live code or data: a function that ran, a static root (an export,
  .init_array), or data those use. Removing it needs a code change or a compile-time
  option.

Retained bytes are the bytes that become unreachable when the function is removed: its
subtree in the dominator tree of the graph from the roots (static roots and functions that
ran), data objects included. Unreachable code has its own tree: from the unreachable
functions nothing refers to, so that its clusters have sizes too.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bpfcov.prune.dominators import dominator_tree
from bpfcov.prune.graph import ReferenceGraph
from bpfcov.prune.model import COLD, DEAD_ONLY, MAX_REFERRERS, UNREACHABLE, Cut, Prune, PrunePlan


def _with_start(graph: ReferenceGraph, starts: Sequence[int], keep: np.ndarray | None = None) -> list:
    """The graph's successor lists plus a virtual start node (the last) with an edge to
    each of `starts`; restricted to the nodes `keep` marks when given."""
    if keep is None:
        return [*graph.refs, list(starts)]
    return [[t for t in targets if keep[t]] if keep[n] else [] for n, targets in enumerate(graph.refs)] + [list(starts)]


def _sources(graph: ReferenceGraph, members: np.ndarray, referrers: list[set[int]]) -> list[int]:
    """Nodes of `members` from which every member can be reached inside `members`: those
    nothing inside refers to, then one node of each cycle nothing outside it leads into."""
    inside = np.flatnonzero(members).tolist()
    member = members.tolist()  # lists in the loops: a numpy element costs ten times a list's
    starts = [n for n in inside if not any(member[r] for r in referrers[n])]
    seen = [False] * len(graph.nodes)

    def visit(firsts: list[int]) -> None:
        """Mark what `firsts` reach inside `members`: one walk for all of them, as most
        members of a big object's unreached part are lone functions."""
        stack = list(firsts)
        for n in stack:
            seen[n] = True
        while stack:
            for t in graph.refs[stack.pop()]:
                if member[t] and not seen[t]:
                    seen[t] = True
                    stack.append(t)

    visit(starts)
    for n in inside:
        if not seen[n]:
            starts.append(n)
            visit([n])
    return starts


def prune_plan(graph: ReferenceGraph, statuses: Sequence[str], names: Sequence[str]) -> PrunePlan:
    """The plan for an object whose function `i` has report status `statuses[i]` ("hit",
    "unhit", "unmeasured", "no-code") and is called `names[i]` in reports."""
    n_nodes = len(graph.nodes)
    never = np.zeros(n_nodes, dtype=bool)      # never-executed function nodes
    ran: list[int] = []
    for fi, node in graph.node_of_function.items():
        if statuses[fi] == "unhit":
            never[node] = True
        elif statuses[fi] in ("hit", "unmeasured"):
            ran.append(node)
    roots = list(graph.roots)
    live_starts = sorted(set(roots) | set(ran))
    reached = graph.reachable_from(live_starts)
    # Live: what the roots and the functions that ran reach without passing through a
    # never-executed function.
    never_ = never.tolist()  # lists in the loops: a numpy element costs ten times a list's
    live_ = [False] * n_nodes
    stack = [n for n in live_starts if not never_[n]]
    for n in stack:
        live_[n] = True
    while stack:
        for t in graph.refs[stack.pop()]:
            if not live_[t] and not never_[t]:
                live_[t] = True
                stack.append(t)
    referrers = graph.referrers()
    weight = np.array([node.size if node.kind != "unbounded" else 0 for node in graph.nodes] + [0], dtype=np.int64)

    # The reached part's tree, from the roots and what ran.
    tree = dominator_tree(_with_start(graph, live_starts), n_nodes)
    retained = tree.subtree_sums(weight)
    # The unreached part's own tree, from its sources.
    unreached = ~reached
    unreached_tree = dominator_tree(_with_start(graph, _sources(graph, unreached, referrers), unreached), n_nodes)
    retained_unreached = unreached_tree.subtree_sums(weight)

    unreached_ = unreached.tolist()
    retained_, retained_unreached_ = retained.tolist(), retained_unreached.tolist()
    prune: dict[int, Prune] = {}
    function_of = {node: fi for fi, node in graph.node_of_function.items()}
    for fi, node in graph.node_of_function.items():
        if not never_[node]:
            continue
        if unreached_[node]:
            prune[fi] = Prune(UNREACHABLE, retained_unreached_[node])
        elif node in graph.roots or any(live_[r] for r in referrers[node]):
            prune[fi] = Prune(COLD, retained_[node])
        else:
            prune[fi] = Prune(DEAD_ONLY, retained_[node])

    cuts: list[Cut] = []
    for dom_tree, bytes_of in ((tree, retained_), (unreached_tree, retained_unreached_)):
        # The nearest never-executed function dominating each node (itself included).
        owner = [-1] * (n_nodes + 1)
        idom = dom_tree.idom.tolist()
        clusters: dict[int, list[int]] = {}
        for node in dom_tree.order[1:]:
            parent = owner[idom[node]]
            if never_[node] and parent < 0:
                owner[node] = node
                clusters[node] = [node]
            else:
                owner[node] = parent
                if never_[node]:
                    clusters[parent].append(node)
        for root, members in clusters.items():
            fi = function_of[root]
            if len(members) > 1:
                members.sort(key=lambda m: (m != root, -graph.nodes[m].size))
            refs, shown = [], []
            if referrers[root]:  # most never-executed functions of a big object: nothing refers to them
                refs = sorted(referrers[root], key=lambda r: (not live_[r], graph.nodes[r].name))
                shown = [names[function_of[r]] if r in function_of else graph.nodes[r].name
                         for r in refs[:MAX_REFERRERS]]
            cuts.append(Cut(fi, prune[fi].klass, bytes_of[root], [function_of[m] for m in members],
                            shown, len(refs), graph.roots.get(root)))
    cuts.sort(key=lambda c: (-c.retained_bytes, names[c.function]))
    return PrunePlan(prune, cuts)
