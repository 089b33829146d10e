"""A draft tree and the rule that verifies it.

The verify forward runs the request's last token (the root, whose K/V the target has not computed
yet) followed by the draft nodes. Node j sees the cached prefix, the root, its ancestors and
itself. Verification walks from the root: at each node the target's own choice (greedy or sampled
with the request's seed at that output index) is accepted; if a child drafted that same token the
walk moves there, else it stops. Every emitted token is the target's choice given exactly the
tokens before it, so the output is the one decoding without speculation would give."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch


@dataclass
class DraftTree:
    tokens: list[int] = field(default_factory=list)   # draft node -> token
    parents: list[int] = field(default_factory=list)  # draft node -> parent node, -1 = the root

    def __len__(self) -> int:
        return len(self.tokens)

    def add(self, token: int, parent: int) -> int:
        assert parent < len(self.tokens), "parents come before their children"
        self.tokens.append(token)
        self.parents.append(parent)
        return len(self.tokens) - 1

    def depths(self) -> list[int]:
        """Depth of each draft node (a child of the root has depth 1)."""
        out: list[int] = []
        for p in self.parents:
            out.append(1 if p < 0 else out[p] + 1)
        return out

    def paths(self) -> list[list[int]]:
        """For each of the 1 + len(self) verify rows (root first), the draft tokens on the way to
        it: what the output holds when that row's token is chosen."""
        out: list[list[int]] = [[]]
        for token, p in zip(self.tokens, self.parents):
            out.append(out[p + 1] + [token])
        return out

    def truncate(self, n: int) -> None:
        """Keep the first n nodes (a prefix of the node order is ancestor-closed)."""
        del self.tokens[n:], self.parents[n:]

    def subtree(self, nodes: Iterable[int]) -> DraftTree:
        """The given nodes whose ancestors are all given too, renumbered in node order."""
        out, index = DraftTree(), {-1: -1}
        for j in sorted(set(nodes)):
            if self.parents[j] in index:
                index[j] = out.add(self.tokens[j], index[self.parents[j]])
        return out

    def tree_mask(self) -> torch.Tensor:
        """(1 + n, 1 + n) bool over the verify rows (root first): row i may see column j iff j is
        i, an ancestor of i, or the root."""
        n = len(self.tokens)
        rows = [[True] + [False] * n]  # built in Python, one tensor at the end: this runs on the
        for i, p in enumerate(self.parents, start=1):  # host every verify step
            row = list(rows[p + 1]) if p >= 0 else [True] + [False] * n
            row[i] = True
            rows.append(row)
        return torch.tensor(rows, dtype=torch.bool)


def verify(tree: DraftTree, target_tokens: list[int]) -> tuple[list[int], list[int]]:
    """target_tokens[i]: the target's choice at verify row i (row 0 the root, row j + 1 draft node
    j). Returns (emitted tokens, accepted draft nodes): the walk's tokens, the last one the
    target's own, and the nodes whose drafted token was accepted, in order."""
    children: dict[tuple[int, int], int] = {}
    for j, (token, p) in enumerate(zip(tree.tokens, tree.parents)):
        children.setdefault((p, token), j)
    emitted, accepted, node = [], [], -1
    while True:
        token = target_tokens[node + 1]
        emitted.append(token)
        nxt = children.get((node, token))
        if nxt is None:
            return emitted, accepted
        accepted.append(nxt)
        node = nxt
