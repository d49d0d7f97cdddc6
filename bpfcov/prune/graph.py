"""The static reference graph of one ELF object, and where a report gets it: from memory,
from the cache on disk (graph_cache.py), or by reading the object (graph_reader.py, which
says what the nodes, edges and roots are). A warm report never loads the reader: it needs
capstone and pyelftools, whose imports cost more than the graph's cache."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from bpfcov.errors import BpfcovError
from bpfcov.probes.build_id import build_id_of
from bpfcov.probes.model import ObjectIndex


@dataclass
class Node:
    name: str
    kind: str                  # "function" | "data" | "plt" | "got" | "unbounded"
    address: int
    size: int
    function: int | None = None   # index into the ObjectIndex's functions


@dataclass
class ReferenceGraph:
    """Nodes, each node's successors (the nodes it refers to), and the static roots."""

    path: str
    nodes: list[Node]
    refs: list[set[int]]
    roots: dict[int, str]                              # node -> why it is a root
    node_of_function: dict[int, int] = field(default_factory=dict)  # function index -> node

    def referrers(self) -> list[set[int]]:
        back: list[set[int]] = [set() for _ in self.nodes]
        for source, targets in enumerate(self.refs):
            for target in targets:
                back[target].add(source)
        return back

    def reachable_from(self, starts) -> np.ndarray:
        """A bool per node: whether a path leads to it from any of `starts`."""
        seen = np.zeros(len(self.nodes), dtype=bool)
        stack = list(starts)
        seen[stack] = True
        while stack:
            for target in self.refs[stack.pop()]:
                if not seen[target]:
                    seen[target] = True
                    stack.append(target)
        return seen




class GraphUnavailable(Exception):
    """The object's file is not here to read, or is not the build that was traced."""


def graph_of(index: ObjectIndex) -> ReferenceGraph:
    """The reference graph of the object `index` was built from, read from its path, which
    must still hold the same build; kept for the next report of the same file, in memory
    and on disk (graph_cache.py)."""
    try:
        st = os.stat(index.path)
    except OSError as e:
        raise GraphUnavailable(f"{index.path} cannot be read ({e.strerror})") from None
    key = (index.path, st.st_size, st.st_mtime_ns, index.build_id, len(index.functions))
    if key not in _GRAPHS:
        try:
            build_id = build_id_of(index.path)
        except BpfcovError as e:
            raise GraphUnavailable(str(e)) from None
        if build_id != index.build_id:
            raise GraphUnavailable(f"{index.path} is not the build that was traced (build-id "
                                   f"{build_id or 'none'}, traced {index.build_id or 'none'})")
        if len(_GRAPHS) >= _GRAPHS_KEPT:
            _GRAPHS.pop(next(iter(_GRAPHS)))
        from bpfcov.prune import graph_cache  # it imports this module
        disk_key = graph_cache.key_for(index)
        graph = graph_cache.load(disk_key, index.path)
        if graph is None:
            from bpfcov.prune.graph_reader import reference_graph  # capstone and pyelftools: only here
            try:
                graph = reference_graph(index.path, index)
            except Exception as e:  # untrusted input: whatever a malformed file makes the readers raise
                raise GraphUnavailable(f"{index.path}: its references cannot be read ({type(e).__name__}: "
                                       f"{str(e)[:200]})") from e
            graph_cache.store(disk_key, graph)
        _GRAPHS[key] = graph
    return _GRAPHS[key]


# Graphs of the last objects reported: the API builds a report per question asked.
_GRAPHS: dict[tuple, ReferenceGraph] = {}
_GRAPHS_KEPT = 8
