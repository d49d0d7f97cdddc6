"""Dominator trees, by the iterative algorithm of Cooper, Harvey and Kennedy ("A Simple,
Fast Dominance Algorithm", 2001): fast in practice on graphs of this size, and short.

Node d dominates n when every path from the start to n passes through d. Remove d, and
everything it dominates becomes unreachable: the bytes a cut frees are its subtree's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class DominatorTree:
    idom: np.ndarray      # int64 per node: its immediate dominator; -1 when unreachable; start: itself
    order: list[int]      # the reachable nodes in reverse postorder (start first): dominators come first

    def subtree_sums(self, weight: np.ndarray) -> np.ndarray:
        """Per node, the total weight of the nodes it dominates, itself included."""
        total = weight.astype(np.int64).copy()
        total[self.idom < 0] = 0
        for node in reversed(self.order[1:]):
            total[self.idom[node]] += total[node]
        return total


def _reverse_postorder(successors: Sequence, start: int) -> list[int]:
    seen = {start}
    postorder: list[int] = []
    stack = [(start, iter(successors[start]))]
    while stack:
        node, children = stack[-1]
        for child in children:
            if child not in seen:
                seen.add(child)
                if not successors[child]:  # a leaf (most functions of a big object): done at once
                    postorder.append(child)
                    continue
                stack.append((child, iter(successors[child])))
                break
        else:
            stack.pop()
            postorder.append(node)
    return postorder[::-1]


def dominator_tree(successors: Sequence, start: int) -> DominatorTree:
    """The dominator tree of the nodes reachable from `start`; `successors[n]` iterates
    the nodes n has an edge to."""
    order = _reverse_postorder(successors, start)
    rank = np.full(len(successors), -1, dtype=np.int64)
    rank[order] = np.arange(len(order))
    predecessors: list[list[int]] = [[] for _ in successors]
    for node in order:
        for child in successors[node]:
            predecessors[child].append(node)
    idom = np.full(len(successors), -1, dtype=np.int64)
    idom[start] = start
    dom = idom.tolist()  # a list: element access in the loop below is several times faster
    rank_of = rank.tolist()

    def intersect(a: int, b: int) -> int:
        while a != b:
            while rank_of[a] > rank_of[b]:
                a = dom[a]
            while rank_of[b] > rank_of[a]:
                b = dom[b]
        return a

    def meet(node: int) -> int:
        """The nearest common dominator of `node`'s predecessors settled so far."""
        new = -1
        for p in predecessors[node]:
            if dom[p] != -1:
                new = p if new == -1 else intersect(p, new)
        return new

    # The first pass in reverse postorder settles every node with one predecessor (that
    # predecessor comes first, so it is settled too): later passes revisit only the joins.
    joins = []
    for node in order[1:]:
        if len(predecessors[node]) == 1:
            dom[node] = predecessors[node][0]
        else:
            joins.append(node)
            dom[node] = meet(node)
    changed = True
    while changed:
        changed = False
        for node in joins:
            new = meet(node)
            if new != dom[node]:
                dom[node] = new
                changed = True
    return DominatorTree(np.array(dom, dtype=np.int64), order)
