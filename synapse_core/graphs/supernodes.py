"""Supernodes: nodes that write in nearly the same direction, grouped (CircuitScope), then merged,
split and named by hand. The groups live on the graph, so storing the graph stores their names."""
from __future__ import annotations

import dataclasses

import numpy as np

from ..common.errors import BadInput
from .graph import AttributionGraph, Supernode

COSINE = 0.7  # output directions more alike than this share a group


def group_by_direction(graph: AttributionGraph, cosine: float = COSINE) -> tuple[Supernode, ...]:
    """Groups of the kept heads and MLP blocks linked by cosine > `cosine` of their output directions
    (single linkage); groups of one are left out. Named after their first member."""
    index = {n.id: i for i, n in enumerate(graph.pool)}
    members = [n for n in graph.nodes if n.kind in ("head", "mlp", "feature")]
    if len(members) < 2:
        return ()
    dirs = graph.pool_directions[[index[n.id] for n in members]]
    linked = dirs @ dirs.T > cosine
    parent = list(range(len(members)))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in zip(*np.nonzero(np.triu(linked, 1))):
        parent[root(int(i))] = root(int(j))
    groups: dict[int, list[str]] = {}
    for i, n in enumerate(members):
        groups.setdefault(root(i), []).append(n.id)
    found = [tuple(g) for g in groups.values() if len(g) > 1]
    return tuple(Supernode(name=f"group of {g[0]}", members=g) for g in found)


def _check(graph: AttributionGraph, names) -> None:
    known = {s.name for s in graph.supernodes}
    for name in names:
        if name not in known:
            raise BadInput(f"supernode {name!r} does not exist; the graph has {', '.join(sorted(known)) or 'none'}")


def merge(graph: AttributionGraph, names, new_name: str) -> AttributionGraph:
    """One supernode holding the members of `names`, called new_name."""
    names = list(names)
    if len(names) < 2:
        raise BadInput("merging needs at least two supernodes")
    _check(graph, names)
    members = tuple(dict.fromkeys(m for s in graph.supernodes if s.name in names for m in s.members))
    rest = tuple(s for s in graph.supernodes if s.name not in names)
    return _with(graph, rest + (Supernode(_free(rest, new_name), members),))


def split(graph: AttributionGraph, name: str) -> AttributionGraph:
    """The supernode dissolved: its members stand alone again."""
    _check(graph, [name])
    return _with(graph, tuple(s for s in graph.supernodes if s.name != name))


def rename(graph: AttributionGraph, name: str, new_name: str) -> AttributionGraph:
    _check(graph, [name])
    rest = tuple(s for s in graph.supernodes if s.name != name)
    return _with(graph, tuple(dataclasses.replace(s, name=_free(rest, new_name)) if s.name == name else s
                              for s in graph.supernodes))


def group(graph: AttributionGraph, node_ids, name: str) -> AttributionGraph:
    """A new supernode of hand-picked nodes (taken out of any group they were in)."""
    node_ids = tuple(dict.fromkeys(node_ids))
    for node_id in node_ids:
        graph.node(node_id)  # raises on an unknown id
    if len(node_ids) < 2:
        raise BadInput("a supernode needs at least two nodes")
    rest = tuple(dataclasses.replace(s, members=tuple(m for m in s.members if m not in node_ids))
                 for s in graph.supernodes)
    rest = tuple(s for s in rest if len(s.members) > 1)
    return _with(graph, rest + (Supernode(_free(rest, name), node_ids),))


def _free(existing, name: str) -> str:
    name = (name or "").strip()
    if not name:
        raise BadInput("a supernode needs a name")
    if name in {s.name for s in existing}:
        raise BadInput(f"a supernode is already called {name!r}")
    return name


def _with(graph: AttributionGraph, supernodes) -> AttributionGraph:
    return dataclasses.replace(graph, supernodes=tuple(supernodes))
