"""Reference graphs kept on disk, so the reports after the first on a build do not read
its machine code again (on a 50,000-function binary that reading is most of a report's
time).

Entries live beside the probe indexes (probes/cache.py), one .npz each, keyed by the
object's build-id (or, without one, its real path, size and mtime) and its functions'
addresses and sizes, which decide the graph's function nodes. Like the probe cache, they
are loaded without pickle, and an entry that fails to load or whose key differs is
deleted and rebuilt, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from bpfcov.probes.cache import cache_dir, save_entry
from bpfcov.probes.model import ObjectIndex
from bpfcov.prune.graph import Node, ReferenceGraph

SCHEMA = 1


def key_for(index: ObjectIndex) -> str:
    st = os.stat(index.path)
    identity = (f"build-id:{index.build_id}" if index.build_id
                else f"file:{os.path.realpath(index.path)}:{st.st_size}:{st.st_mtime_ns}")
    functions = hashlib.sha256(np.array([(f.address, f.size) for f in index.functions], dtype=np.uint64)
                               .tobytes()).hexdigest()
    return hashlib.sha256(json.dumps(["graph", SCHEMA, identity, functions]).encode()).hexdigest()


def _entry_path(key: str) -> str:
    return os.path.join(cache_dir(), f"graph-{key}.npz")


def store(key: str, graph: ReferenceGraph) -> None:
    meta = {"key": key, "names": [n.name for n in graph.nodes], "kinds": [n.kind for n in graph.nodes],
            "roots": [[node, why] for node, why in graph.roots.items()]}
    sizes = np.array([len(r) for r in graph.refs], dtype=np.int64)
    targets = [t for r in graph.refs for t in sorted(r)]
    arrays = {
        "meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
        "address": np.array([n.address for n in graph.nodes], dtype=np.uint64),
        "size": np.array([n.size for n in graph.nodes], dtype=np.int64),
        "function": np.array([-1 if n.function is None else n.function for n in graph.nodes], dtype=np.int64),
        "ref_offsets": np.concatenate(([0], np.cumsum(sizes))).astype(np.int64),
        "ref_targets": np.array(targets, dtype=np.int64),
        "function_nodes": np.array(sorted(graph.node_of_function.items()), dtype=np.int64).reshape(-1, 2),
    }
    save_entry(_entry_path(key), arrays)


def load(key: str, path: str) -> ReferenceGraph | None:
    """The graph stored under `key`, for the object now at `path`; None when there is none."""
    entry = _entry_path(key)
    if not os.path.exists(entry):
        return None
    try:
        with np.load(entry, allow_pickle=False) as data:
            meta = json.loads(bytes(data["meta"]).decode())
            if meta.get("key") != key:
                raise ValueError("key mismatch")
            address, size, function = (data[c].tolist() for c in ("address", "size", "function"))
            names, kinds = meta["names"], meta["kinds"]
            if not len(names) == len(kinds) == len(address) == len(size) == len(function):
                raise ValueError("ragged node columns")
            nodes = [Node(name, kind, a, n, None if fi < 0 else fi)
                     for name, kind, a, n, fi in zip(names, kinds, address, size, function)]
            offsets, targets = data["ref_offsets"].tolist(), data["ref_targets"].tolist()
            if len(offsets) != len(nodes) + 1 or any(not 0 <= t < len(nodes) for t in targets):
                raise ValueError("references out of range")
            refs = [set(targets[offsets[i]:offsets[i + 1]]) for i in range(len(nodes))]
            roots = {int(node): str(why) for node, why in meta["roots"]}
            node_of_function = {int(fi): int(node) for fi, node in data["function_nodes"].tolist()}
        if any(not 0 <= n < len(nodes) for n in list(roots) + list(node_of_function.values())):
            raise ValueError("nodes out of range")
        return ReferenceGraph(path, nodes, refs, roots, node_of_function)
    except Exception:  # whatever is wrong with the entry, it is rebuilt
        try:
            os.unlink(entry)
        except OSError:
            pass
        return None
