"""RadixCache: unit tests of each operation, then a stateful property test that drives random
request lifecycles against a dict model of which token prefixes hold which KV slot."""
from __future__ import annotations

import io
from collections import Counter

import pytest
import torch
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from sgl.runtime.cache.memory_pool import TokenAllocator
from sgl.runtime.cache.radix_cache import RadixCache, TreeNode, assert_pool_invariant


def make(size: int = 64, disable: bool = False) -> tuple[TokenAllocator, RadixCache]:
    allocator = TokenAllocator(size)
    return allocator, RadixCache(allocator, disable=disable)


def put(cache: RadixCache, key: list[int]) -> torch.Tensor:
    """Insert `key` as a request would: reuse the matched prefix, allocate the rest."""
    prefix, _ = cache.match_prefix(key)
    value = torch.cat([prefix, cache.allocator.alloc(len(key) - len(prefix))])
    assert cache.insert(key, value) == len(prefix)
    return value


def free_slots(allocator: TokenAllocator) -> list[int]:
    return allocator.free_slots()


# ---- unit tests -------------------------------------------------------------------------------

def test_empty_tree_matches_nothing():
    _, cache = make()
    slots, node = cache.match_prefix([1, 2, 3])
    assert slots.dtype == torch.int64 and slots.numel() == 0
    assert node is cache.root
    assert cache.match_prefix([])[1] is cache.root
    cache.check_integrity()


def test_exact_and_partial_matches_return_inserted_slots():
    allocator, cache = make()
    value = put(cache, [1, 2, 3, 4])
    slots, node = cache.match_prefix([1, 2, 3, 4])
    assert slots.tolist() == value.tolist() and node.key == [1, 2, 3, 4]
    slots, _ = cache.match_prefix([1, 2, 3, 4, 5, 6])  # longer query: whole entry
    assert slots.tolist() == value.tolist()
    assert cache.match_prefix([2, 1])[0].numel() == 0  # no shared first token
    assert_pool_invariant(allocator, cache)


def test_match_ending_inside_a_node_splits_it():
    _, cache = make()
    value = put(cache, [1, 2, 3, 4, 5])
    slots, node = cache.match_prefix([1, 2, 3, 9])
    assert slots.tolist() == value[:3].tolist()
    assert node.key == [1, 2, 3] and node.parent is cache.root
    assert [c.key for c in node.children.values()] == [[4, 5]]
    assert cache.total_size() == 5
    cache.check_integrity()
    # The split keeps the whole entry reachable.
    assert cache.match_prefix([1, 2, 3, 4, 5])[0].tolist() == value.tolist()


def test_split_of_locked_node_keeps_locks_on_both_halves():
    _, cache = make()
    put(cache, [1, 2, 3, 4])
    _, node = cache.match_prefix([1, 2, 3, 4])
    assert cache.inc_lock_ref(node) == -4
    _, upper = cache.match_prefix([1, 2, 7])
    assert upper.lock_ref == 1 and node.lock_ref == 1 and node.parent is upper
    assert cache.protected_size() == 4 and cache.evictable_size() == 0
    assert cache.dec_lock_ref(node) == 4  # unlocks through the new upper node too
    assert upper.lock_ref == 0 and cache.evictable_size() == 4
    cache.check_integrity()


def test_split_inherits_access_time():
    allocator, cache = make()
    put(cache, [1, 2, 3, 4])
    put(cache, [5, 6])  # newer than [1, 2, 3, 4]
    old_time = cache.root.children[1].last_access
    put(cache, [1, 2, 9])  # splits [1,2,3,4] and touches only [1,2]
    tail = cache.root.children[1].children[3]
    assert tail.key == [3, 4] and tail.last_access == old_time
    assert cache.evict(1) == 2  # [3, 4] is now the oldest leaf
    assert cache.match_prefix([1, 2, 3])[0].numel() == 2
    assert cache.match_prefix([5, 6])[0].numel() == 2
    assert_pool_invariant(allocator, cache)


def test_insert_returns_length_already_present():
    allocator, cache = make()
    first = put(cache, [1, 2, 3])
    dup = allocator.alloc(5)  # a request that computed the whole sequence itself
    assert cache.insert([1, 2, 3, 4, 5], dup) == 3
    allocator.free(dup[:3])  # contract: caller frees value[p:r] with p = 0 here
    slots, _ = cache.match_prefix([1, 2, 3, 4, 5])
    assert slots.tolist() == first.tolist() + dup[3:].tolist()  # old slots kept
    assert cache.insert([1, 2, 3, 4, 5], slots) == 5
    assert cache.insert([1, 2, 7], torch.cat([slots[:2], allocator.alloc(1)])) == 2
    cache.check_integrity()
    assert_pool_invariant(allocator, cache)


def test_insert_copies_caller_tensor():
    _, cache = make()
    value = torch.tensor([10, 11, 12])
    cache.insert([1, 2, 3], value)
    value[:] = 0  # caller reuses its buffer
    assert cache.match_prefix([1, 2, 3])[0].tolist() == [10, 11, 12]


def test_lock_prevents_eviction():
    allocator, cache = make()
    put(cache, [1, 2, 3])
    put(cache, [4, 5])
    _, node = cache.match_prefix([1, 2, 3])
    cache.inc_lock_ref(node)
    assert cache.evict(100) == 2  # only [4, 5]
    assert cache.match_prefix([1, 2, 3])[0].numel() == 3
    assert cache.protected_size() == 3 and cache.evictable_size() == 0
    cache.dec_lock_ref(node)
    assert cache.evict(100) == 3 and cache.total_size() == 0
    assert allocator.available_size() == allocator.size


def test_lock_on_child_protects_ancestors_only():
    _, cache = make()
    put(cache, [1, 2, 3, 4])
    put(cache, [1, 2, 5, 6])
    _, leaf = cache.match_prefix([1, 2, 3, 4])
    assert cache.inc_lock_ref(leaf) == -4  # [1,2] and [3,4] become protected
    assert cache.inc_lock_ref(leaf) == 0  # already protected
    assert cache.evict(100) == 2  # the sibling [5, 6]
    assert cache.dec_lock_ref(leaf) == 0 and cache.dec_lock_ref(leaf) == 4
    with pytest.raises(AssertionError):
        cache.dec_lock_ref(leaf)


def test_evict_takes_least_recently_used_leaf_first():
    allocator, cache = make()
    a, b, c = put(cache, [1, 1]), put(cache, [2, 2]), put(cache, [3, 3])
    cache.match_prefix([1, 1])  # a is now the most recent
    assert cache.evict(1) == 2
    assert free_slots(allocator)[-2:] == b.tolist()
    assert cache.evict(2) == 2
    assert free_slots(allocator)[-2:] == c.tolist()
    assert cache.match_prefix([1, 1])[0].tolist() == a.tolist()


def test_parent_becomes_evictable_after_its_children():
    allocator, cache = make()
    put(cache, [1, 2, 3])
    put(cache, [1, 2, 4])
    put(cache, [9])
    cache.match_prefix([1, 2, 3])  # [1,2] and its children are newer than [9]
    cache.match_prefix([1, 2, 4])
    # The old [9] goes first; then leaves [3] and [4]; then [1, 2], now a leaf.
    assert cache.evict(3) == 3
    assert cache.match_prefix([1, 2, 4])[0].numel() == 2
    assert cache.evict(1) == 2 and cache.total_size() == 0
    assert sorted(free_slots(allocator)) == list(range(1, 65))


def test_evict_stops_once_enough_is_freed():
    _, cache = make()
    for k in range(5):
        put(cache, [k, k, k])
    assert cache.evict(4) == 6  # two whole leaves, not more
    assert cache.evict(0) == 0
    assert cache.total_size() == 9


def test_reset_frees_everything():
    allocator, cache = make()
    put(cache, [1, 2, 3])
    put(cache, [1, 5])
    cache.reset()
    assert cache.total_size() == 0 and allocator.available_size() == allocator.size
    assert sorted(free_slots(allocator)) == list(range(1, 65))
    assert cache.match_prefix([1, 2, 3])[1] is cache.root
    put(cache, [4])
    _, node = cache.match_prefix([4])
    cache.inc_lock_ref(node)
    with pytest.raises(AssertionError):
        cache.reset()


def test_disabled_cache_stores_nothing_and_hands_slots_back():
    allocator, cache = make(disable=True)
    value = allocator.alloc(4)
    prefix, node = cache.match_prefix([1, 2, 3, 4])
    assert prefix.numel() == 0 and node is cache.root
    kept = cache.insert([1, 2, 3, 4], value)
    assert kept == 4  # the caller keeps (and frees) value[0:4]
    allocator.free(value[len(prefix):kept])
    assert cache.match_prefix([1, 2, 3, 4])[0].numel() == 0
    assert cache.total_size() == 0 and cache.evict(10) == 0
    assert_pool_invariant(allocator, cache)


def test_long_keys_and_deep_trees():
    allocator, cache = make(size=6000)
    key = list(range(3000))
    put(cache, key)
    for end in range(1, 1500):  # grows a chain 1500 nodes deep by splitting
        cache.match_prefix(key[:end])
    cache.check_integrity()
    assert cache.match_prefix(key)[0].numel() == 3000
    cache.pretty_print(io.StringIO())
    assert cache.evict(3000) == 3000
    assert_pool_invariant(allocator, cache)


def _duplicate_slot(cache, upper, leaf):
    leaf.value = torch.cat([upper.value, torch.tensor([61])])


def _child_locked_more(cache, upper, leaf):
    cache.inc_lock_ref(leaf)
    leaf.lock_ref = 2


def _empty_node(cache, upper, leaf):
    leaf.children[5] = TreeNode([], torch.empty(0, dtype=torch.int64), leaf)


def _wrong_child_key(cache, upper, leaf):
    upper.children[7] = upper.children.pop(2)


def _length_mismatch(cache, upper, leaf):
    leaf.value = torch.tensor([60])


def _size_counter_off(cache, upper, leaf):
    cache._evictable_size += 1


@pytest.mark.parametrize("corrupt", [_duplicate_slot, _child_locked_more, _empty_node,
                                     _wrong_child_key, _length_mismatch, _size_counter_off])
def test_check_integrity_detects_corruption(corrupt):
    _, cache = make()
    put(cache, [1, 2, 3])
    put(cache, [1, 4])
    upper = cache.root.children[1]
    leaf = upper.children[2]
    assert upper.key == [1] and leaf.key == [2, 3]
    cache.check_integrity()
    corrupt(cache, upper, leaf)
    with pytest.raises(AssertionError):
        cache.check_integrity()


def test_pool_invariant_detects_a_leak():
    allocator, cache = make()
    put(cache, [1, 2])
    assert_pool_invariant(allocator, cache)
    allocator.alloc(1)
    with pytest.raises(AssertionError):
        assert_pool_invariant(allocator, cache)


# ---- stateful property test -------------------------------------------------------------------

def tree_contents(cache: RadixCache) -> dict[tuple[int, ...], int]:
    """Every token path stored in the tree -> the KV slot of its last token (read-only walk)."""
    out, stack = {}, [((), cache.root)]
    while stack:
        path, node = stack.pop()
        for i, token in enumerate(node.key):
            out[path + tuple(node.key[:i + 1])] = int(node.value[i])
        stack.extend((path + tuple(node.key), c) for c in node.children.values())
    return out


POOL_SIZE = 48
keys = st.lists(st.integers(0, 2), min_size=1, max_size=8)


class RadixMachine(RuleBasedStateMachine):
    """Model: `held` maps every cached token path (a tuple) to its KV slot; the tree is correct
    iff it stores exactly those paths. `locks` counts locks per path; requests hold their own
    freshly allocated slots until they finish and insert."""

    def __init__(self) -> None:
        super().__init__()
        self.allocator = TokenAllocator(POOL_SIZE)
        self.cache = RadixCache(self.allocator)
        self.held: dict[tuple[int, ...], int] = {}
        self.locks: Counter[tuple[int, ...]] = Counter()
        self.running: list[tuple[list[int], torch.Tensor, object, torch.Tensor]] = []

    def _present_len(self, key: list[int]) -> int:
        n = 0
        while n < len(key) and tuple(key[:n + 1]) in self.held:
            n += 1
        return n

    def _match(self, key: list[int]):
        slots, node = self.cache.match_prefix(key)
        n = self._present_len(key)
        assert slots.tolist() == [self.held[tuple(key[:i + 1])] for i in range(n)]
        path, walk = [], node
        while walk is not self.cache.root:
            path[:0] = walk.key
            walk = walk.parent
        assert path == key[:n], "returned node does not end exactly at the match"
        return slots, node

    def _alloc(self, num: int):
        if self.allocator.available_size() < num:
            self._evict(num - self.allocator.available_size())
        return self.allocator.alloc(num)

    def _adopt(self, key: list[int], value: torch.Tensor, start: int) -> None:
        for i in range(start, len(key)):
            self.held[tuple(key[:i + 1])] = int(value[i])

    @rule(key=keys)
    def start_request(self, key):
        prefix, node = self._match(key)
        self.cache.inc_lock_ref(node)  # before allocating: eviction must spare the prefix
        for i in range(len(prefix)):
            self.locks[tuple(key[:i + 1])] += 1
        new = self._alloc(len(key) - len(prefix))
        if new is None:
            self._unlock(key, prefix, node)
            return
        self.running.append((key, prefix, node, new))

    def _unlock(self, key, prefix, node) -> None:
        self.cache.dec_lock_ref(node)
        for i in range(len(prefix)):
            self.locks[tuple(key[:i + 1])] -= 1

    @precondition(lambda self: self.running)
    @rule(data=st.data())
    def finish_request(self, data):
        key, prefix, node, new = self.running.pop(data.draw(st.integers(0, len(self.running) - 1)))
        value = torch.cat([prefix, new])
        present = self._present_len(key)
        assert self.cache.insert(key, value) == present
        self.allocator.free(value[len(prefix):present])
        self._adopt(key, value, present)
        self._unlock(key, prefix, node)

    @rule(key=keys)
    def insert_without_match(self, key):
        value = self._alloc(len(key))
        if value is None:
            return
        present = self._present_len(key)
        assert self.cache.insert(key, value) == present
        self.allocator.free(value[:present])
        self._adopt(key, value, present)

    @rule(key=keys)
    def match(self, key):
        self._match(key)

    @rule(num=st.integers(0, POOL_SIZE))
    def evict(self, num):
        self._evict(num)

    def _evict(self, num: int) -> None:
        evictable = sum(1 for p in self.held if self.locks[p] == 0)
        freed = self.cache.evict(num)
        after = tree_contents(self.cache)
        assert after.keys() <= self.held.keys()
        gone = self.held.keys() - after.keys()
        assert freed == len(gone) and all(self.locks[p] == 0 for p in gone)
        assert freed >= min(num, evictable) and freed < num + 8  # stops after whole leaves
        for p in gone:
            del self.held[p]

    @precondition(lambda self: not self.running)
    @rule()
    def reset(self):
        self.cache.reset()
        self.held.clear()

    @invariant()
    def consistent(self):
        self.cache.check_integrity()
        assert tree_contents(self.cache) == self.held
        protected = sum(1 for p in self.held if self.locks[p] > 0)
        assert self.cache.protected_size() == protected
        assert self.cache.evictable_size() == len(self.held) - protected
        owned = [s for _, _, _, new in self.running for s in new.tolist()]
        # Every slot is in exactly one place: free, the tree, or a running request.
        everywhere = free_slots(self.allocator) + list(self.held.values()) + owned
        assert sorted(everywhere) == list(range(1, POOL_SIZE + 1))
        if not self.running:
            assert_pool_invariant(self.allocator, self.cache)


RadixMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40,
                                          deadline=None)
TestRadixMachine = RadixMachine.TestCase
