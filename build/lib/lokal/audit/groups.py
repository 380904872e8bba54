"""Union-find: pairs of similar items become groups (A~B and B~C put A, B, C together)."""

from __future__ import annotations

from collections.abc import Iterable


class UnionFind:
    """Disjoint sets over 0..n-1 with path halving; small enough to read in one go."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        ri, rj = self.find(i), self.find(j)
        if ri != rj:
            self.parent[max(ri, rj)] = min(ri, rj)  # the smallest index leads: stable output


def groups_from_pairs(n: int, pairs: Iterable[tuple[int, int]]) -> list[list[int]]:
    """Groups of 2+ items joined by `pairs`, each sorted, ordered by their first item."""
    sets = UnionFind(n)
    for i, j in pairs:
        sets.union(int(i), int(j))
    members: dict[int, list[int]] = {}
    for i in range(n):
        members.setdefault(sets.find(i), []).append(i)
    return sorted((g for g in members.values() if len(g) > 1), key=lambda g: g[0])
