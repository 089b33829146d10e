"""An approximate picture of every worker's prefix cache: one character-level radix tree of the
request texts routed so far, where each node records which workers ("tenants") were sent its
prefix and when they last were. Characters, not tokens, so the router needs no tokenizer.

Invariant: a tenant on a node is on every ancestor of that node (texts are inserted from the
root), so a tenant's cached text is a subtree and eviction can work from its leaves up."""
from __future__ import annotations

import heapq
from collections.abc import Collection, Iterator


class _Node:
    __slots__ = ("children", "parent", "tenants", "text")

    def __init__(self, text: str, parent: _Node | None) -> None:
        self.text = text  # the edge label from the parent; "" only at the root
        self.parent = parent
        self.children: dict[str, _Node] = {}  # first character of the child's text -> child
        self.tenants: dict[str, int] = {}  # tenant -> tick of its last access


class ApproxTree:
    def __init__(self) -> None:
        self.root = _Node("", None)
        self._sizes: dict[str, int] = {}  # tenant -> characters it holds
        self._tick = 0

    def insert(self, text: str, tenant: str) -> None:
        """Record that `text` was sent to `tenant` (and refresh its prefix's access time)."""
        self._tick += 1
        node, i = self.root, 0
        self._touch(node, tenant)
        while i < len(text):
            child = node.children.get(text[i])
            if child is None:
                child = _Node(text[i:], node)
                node.children[text[i]] = child
                self._touch(child, tenant)
                return
            n = _match_len(child.text, text, i)
            if n < len(child.text):
                child = self._split(child, n)
            self._touch(child, tenant)
            node, i = child, i + n

    def prefix_match(self, text: str, tenants: Collection[str] | None = None
                     ) -> tuple[int, set[str]]:
        """Longest prefix of `text` held by any of `tenants` (all when None): its length in
        characters and the tenants that hold all of it (empty when nothing matched)."""
        node, i, holders = self.root, 0, set()
        while i < len(text):
            child = node.children.get(text[i])
            if child is None:
                break
            here = {t for t in child.tenants if tenants is None or t in tenants}
            if not here:
                break
            n = _match_len(child.text, text, i)
            i, holders = i + n, here
            if n < len(child.text):
                break
            node = child
        return i, holders

    def size(self, tenant: str) -> int:
        return self._sizes.get(tenant, 0)

    def sizes(self) -> dict[str, int]:
        return dict(self._sizes)

    def remove_tenant(self, tenant: str) -> None:
        for node in list(self._nodes_of(tenant)):
            del node.tenants[tenant]
            if not node.tenants and node is not self.root:
                self._detach(node)
        self._sizes.pop(tenant, None)

    def evict(self, max_size: int) -> None:
        """Drop each tenant's least recently used leaves until it holds at most `max_size`."""
        for tenant in [t for t, size in self._sizes.items() if size > max_size]:
            heap = [(n.tenants[tenant], id(n), n) for n in self._nodes_of(tenant)
                    if n is not self.root and self._is_leaf_of(n, tenant)]
            heapq.heapify(heap)
            while self._sizes[tenant] > max_size and heap:
                _, _, node = heapq.heappop(heap)
                del node.tenants[tenant]
                self._sizes[tenant] -= len(node.text)
                parent = node.parent
                if not node.tenants:
                    self._detach(node)
                if parent is not self.root and self._is_leaf_of(parent, tenant):
                    heapq.heappush(heap, (parent.tenants[tenant], id(parent), parent))

    def check_integrity(self) -> None:
        """Raise AssertionError when an invariant is broken (for tests)."""
        sizes: dict[str, int] = {}
        for node in self._all_nodes():
            for tenant in node.tenants:
                sizes[tenant] = sizes.get(tenant, 0) + len(node.text)
            if node is self.root:
                continue
            assert node.text and node.tenants, "empty edge or tenant-less node"
            assert node.parent.children.get(node.text[0]) is node, "child keyed wrongly"
            assert set(node.tenants) <= set(node.parent.tenants), "tenant missing on an ancestor"
        assert {t: s for t, s in sizes.items() if s} == {t: s for t, s in self._sizes.items() if s}

    def _touch(self, node: _Node, tenant: str) -> None:
        if tenant not in node.tenants:
            self._sizes[tenant] = self._sizes.get(tenant, 0) + len(node.text)
        node.tenants[tenant] = self._tick

    @staticmethod
    def _split(child: _Node, n: int) -> _Node:
        """Cut `child`'s edge after `n` characters; return the new upper node."""
        parent = child.parent
        upper = _Node(child.text[:n], parent)
        upper.tenants = dict(child.tenants)
        parent.children[upper.text[0]] = upper
        child.text, child.parent = child.text[n:], upper
        upper.children[child.text[0]] = child
        return upper

    @staticmethod
    def _detach(node: _Node) -> None:
        node.parent.children.pop(node.text[0], None)

    @staticmethod
    def _is_leaf_of(node: _Node, tenant: str) -> bool:
        return tenant in node.tenants and not any(
            tenant in c.tenants for c in node.children.values())

    def _nodes_of(self, tenant: str) -> Iterator[_Node]:
        stack = [self.root] if tenant in self.root.tenants else []
        while stack:
            node = stack.pop()
            yield node
            stack += [c for c in node.children.values() if tenant in c.tenants]

    def _all_nodes(self) -> Iterator[_Node]:
        stack = [self.root]
        while stack:
            node = stack.pop()
            yield node
            stack += node.children.values()


def _match_len(edge: str, text: str, start: int) -> int:
    """Characters of `edge` equal to `text[start:]` from the front."""
    if text.startswith(edge, start):
        return len(edge)
    n, limit = 0, min(len(edge), len(text) - start)
    while n < limit and edge[n] == text[start + n]:
        n += 1
    return n
