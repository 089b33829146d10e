"""RadixAttention's prefix cache: a radix tree over token-id sequences whose values are the KV
slots holding those tokens, so a new request reuses the KV of any cached prefix.

Ownership: every slot stored in the tree belongs to the tree until `evict`/`reset` hands it back
to the allocator. A slot is either free (in the allocator), in the tree (evictable when its node
is unlocked, protected when locked), or held by a running request that has not inserted it yet.
When no request is running, free + evictable + protected == capacity (`assert_pool_invariant`).
"""
from __future__ import annotations

import heapq
import itertools
import sys
from collections.abc import Sequence
from typing import Optional, TextIO

import torch

from sgl.runtime.cache.memory_pool import TokenAllocator

_node_ids = itertools.count()


def _empty_slots() -> torch.Tensor:
    return torch.empty(0, dtype=torch.int64)


class TreeNode:
    """One edge of the radix tree: `key` are the token ids it adds to its parent's path and
    `value` their KV slots (same length). `lock_ref` counts the locks on paths through it."""

    __slots__ = ("id", "key", "value", "parent", "children", "lock_ref", "last_access")

    def __init__(self, key: list[int], value: torch.Tensor, parent: Optional[TreeNode],
                 last_access: int = 0, lock_ref: int = 0) -> None:
        self.id = next(_node_ids)  # creation order; breaks LRU ties deterministically
        self.key, self.value, self.parent = key, value, parent
        self.children: dict[int, TreeNode] = {}  # first token of the child's key -> child
        self.lock_ref, self.last_access = lock_ref, last_access

    def is_leaf(self) -> bool:
        return not self.children


def common_len(node_key: list[int], key: list[int], start: int) -> int:
    """Length of the common prefix of node_key and key[start:]; linear in the answer."""
    n = min(len(node_key), len(key) - start)
    if node_key[:n] == key[start:start + n]:  # the usual case, compared at C speed
        return n
    i = 0
    while node_key[i] == key[start + i]:
        i += 1
    return i


class RadixCache:
    """Prefix cache over token ids. With `disable=True` it never stores or matches anything but
    keeps the same API and the same ownership contract (see `insert`)."""

    def __init__(self, allocator: TokenAllocator, disable: bool = False) -> None:
        self.allocator, self.disable = allocator, disable
        self.reset()

    def reset(self) -> None:
        """Drop every node and free all its slots. Only valid while nothing is locked."""
        if getattr(self, "root", None) is not None:
            assert self._protected_size == 0, "reset() while requests hold locks"
            self.allocator.free(self._all_slots())
        self.root = TreeNode([], _empty_slots(), None)
        self._clock = 0  # monotonic access counter: LRU is deterministic
        self._evictable_size = self._protected_size = 0

    # ---- lookup and insertion -------------------------------------------------------------

    def match_prefix(self, key: Sequence[int]) -> tuple[torch.Tensor, TreeNode]:
        """Longest cached prefix of `key`: (its KV slots, int64 CPU, and the node ending exactly
        at the match; a node the match ends inside is split). Empty match: (empty, root).
        Marks every node on the path as just used."""
        if self.disable:
            return _empty_slots(), self.root
        key = key if isinstance(key, list) else list(key)
        node, pos, slots, now = self.root, 0, [], self._tick()
        while pos < len(key) and (child := node.children.get(key[pos])) is not None:
            n = common_len(child.key, key, pos)
            if n < len(child.key):
                child = self._split(child, n)
            child.last_access = now
            slots.append(child.value)
            node, pos = child, pos + n
        return (torch.cat(slots) if slots else _empty_slots()), node

    def insert(self, key: Sequence[int], value: torch.Tensor) -> int:
        """Insert `key` with its KV slots `value` (len(value) == len(key)) and return the length
        `r` of the prefix of `key` that the tree already held.

        Contract: the tree keeps its own slots for key[:r] and takes ownership of value[r:]; the
        caller still owns value[:r]. A caller whose first `p` slots came from match_prefix (so
        are the tree's own, p <= r) must free its duplicates value[p:r] itself.
        Disabled cache: stores nothing and returns len(key), so the same rule makes the caller
        free all its non-matched slots (p == 0 there: value[0:len(key)])."""
        assert len(value) == len(key), f"{len(key)} tokens but {len(value)} slots"
        if self.disable:
            return len(key)
        key = key if isinstance(key, list) else list(key)
        node, pos, now = self.root, 0, self._tick()
        while pos < len(key):
            child = node.children.get(key[pos])
            if child is None:
                self._add_leaf(node, key[pos:], value[pos:], now)
                break
            n = common_len(child.key, key, pos)
            if n < len(child.key):
                child = self._split(child, n)
            child.last_access = now
            node, pos = child, pos + n
        return pos

    def _add_leaf(self, parent: TreeNode, key: list[int], value: torch.Tensor, now: int) -> None:
        # Copy the slots: the caller's tensor may be a view of a buffer it reuses.
        leaf = TreeNode(key, value.to(torch.int64).cpu().clone(), parent, now)
        parent.children[key[0]] = leaf
        self._evictable_size += len(key)

    def _split(self, child: TreeNode, n: int) -> TreeNode:
        """Cut `child` after n tokens; returns the new upper node. The old node object keeps the
        lower part, so a request holding it still ends at the same token; the upper node
        inherits lock_ref and last_access since exactly the same paths run through it."""
        upper = TreeNode(child.key[:n], child.value[:n].clone(), child.parent,
                         child.last_access, child.lock_ref)
        upper.parent.children[upper.key[0]] = upper
        child.key, child.value, child.parent = child.key[n:], child.value[n:].clone(), upper
        upper.children[child.key[0]] = child
        return upper

    def _tick(self) -> int:
        self._clock += 1
        return self._clock

    # ---- locking and eviction -------------------------------------------------------------

    def inc_lock_ref(self, node: TreeNode) -> int:
        """Lock the path node -> root against eviction. Returns the change in evictable_size()
        (<= 0: minus the tokens that went from evictable to protected). Lock a matched node
        before calling evict() to make room for the rest of its request."""
        delta = 0
        while node is not self.root:
            if node.lock_ref == 0:
                delta -= len(node.key)
            node.lock_ref += 1
            node = node.parent
        self._evictable_size += delta
        self._protected_size -= delta
        return delta

    def dec_lock_ref(self, node: TreeNode) -> int:
        """Undo one inc_lock_ref(node). Returns the change in evictable_size() (>= 0)."""
        delta = 0
        while node is not self.root:
            assert node.lock_ref > 0, "dec_lock_ref without a matching inc_lock_ref"
            node.lock_ref -= 1
            if node.lock_ref == 0:
                delta += len(node.key)
            node = node.parent
        self._evictable_size += delta
        self._protected_size -= delta
        return delta

    def evict(self, num_tokens: int) -> int:
        """Free least-recently-used unlocked leaves (a parent whose children are all gone becomes
        a leaf in turn) until >= num_tokens slots went back to the allocator or nothing is
        evictable. Returns the number of slots freed."""
        heap = [(n.last_access, n.id, n) for n in self._nodes() if self._is_evictable_leaf(n)]
        heapq.heapify(heap)
        freed, batch = 0, []
        while freed < num_tokens and heap:
            _, _, leaf = heapq.heappop(heap)
            batch.append(leaf.value)
            freed += len(leaf.key)
            parent = leaf.parent
            del parent.children[leaf.key[0]]
            leaf.parent = None
            if self._is_evictable_leaf(parent):
                heapq.heappush(heap, (parent.last_access, parent.id, parent))
        if batch:
            self.allocator.free(torch.cat(batch))
        self._evictable_size -= freed
        return freed

    def _is_evictable_leaf(self, node: TreeNode) -> bool:
        return node is not self.root and node.lock_ref == 0 and node.is_leaf()

    # ---- sizes, checks, debugging ---------------------------------------------------------

    def evictable_size(self) -> int:
        """Tokens in unlocked nodes."""
        return self._evictable_size

    def protected_size(self) -> int:
        """Tokens in locked nodes."""
        return self._protected_size

    def total_size(self) -> int:
        return self._evictable_size + self._protected_size

    def _nodes(self) -> list[TreeNode]:
        """Every non-root node, parents before children; iterative so deep trees are fine."""
        out, stack = [], list(self.root.children.values())
        while stack:
            node = stack.pop()
            out.append(node)
            stack.extend(node.children.values())
        return out

    def _all_slots(self) -> torch.Tensor:
        values = [n.value for n in self._nodes()]
        return torch.cat(values) if values else _empty_slots()

    def check_integrity(self) -> None:
        """Raise AssertionError if any structural or accounting invariant is broken."""
        root = self.root
        assert root.parent is None and not root.key and root.lock_ref == 0
        evictable = protected = 0
        for node in self._nodes():
            assert len(node.key) > 0, "empty non-root node"
            assert node.value.dtype == torch.int64 and node.value.dim() == 1
            assert len(node.value) == len(node.key), "key and value lengths differ"
            assert node.parent.children.get(node.key[0]) is node, "child not keyed by first token"
            assert node.lock_ref >= 0, "negative lock_ref"
            child_locks = sum(c.lock_ref for c in node.children.values())
            assert node.lock_ref >= child_locks, "child locked more than its parent"
            if node.lock_ref:
                protected += len(node.key)
            else:
                evictable += len(node.key)
        assert evictable == self._evictable_size, f"evictable {evictable} != {self._evictable_size}"
        assert protected == self._protected_size, f"protected {protected} != {self._protected_size}"
        slots = self._all_slots()
        assert slots.unique().numel() == slots.numel(), "a slot appears twice in the tree"
        if slots.numel():
            assert 1 <= int(slots.min()) and int(slots.max()) <= self.allocator.size

    def pretty_print(self, file: Optional[TextIO] = None) -> None:
        file = file or sys.stdout
        print(f"RadixCache: evictable={self._evictable_size} protected={self._protected_size}",
              file=file)
        stack = [(c, 1) for c in reversed(list(self.root.children.values()))]
        while stack:
            node, depth = stack.pop()
            key = node.key if len(node.key) <= 8 else node.key[:8] + ["..."]
            print(f"{'  ' * depth}{key} len={len(node.key)} lock={node.lock_ref} "
                  f"t={node.last_access}", file=file)
            stack.extend((c, depth + 1) for c in reversed(list(node.children.values())))


def assert_pool_invariant(allocator: TokenAllocator, cache: RadixCache) -> None:
    """With no request holding slots of its own: free + evictable + locked == capacity."""
    free, evictable, locked = allocator.available_size(), cache.evictable_size(), \
        cache.protected_size()
    assert free + evictable + locked == allocator.size, (
        f"KV slots leaked or double-freed: free {free} + evictable {evictable} + locked {locked}"
        f" != capacity {allocator.size}")
