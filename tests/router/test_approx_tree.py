"""The approximate prefix tree against a brute-force model of what each tenant was sent."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sgl.runtime.router.policies.approx_tree import ApproxTree

TENANTS = ("w0", "w1", "w2")
texts = st.text(alphabet="abc", max_size=12)
inserts = st.lists(st.tuples(texts, st.sampled_from(TENANTS)), max_size=30)


def _common(a: str, b: str) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _model_match(sent: dict[str, list[str]], query: str, allowed: set[str]) -> tuple[int, set[str]]:
    best = {t: max((_common(s, query) for s in sent.get(t, [])), default=0) for t in allowed}
    top = max(best.values(), default=0)
    return top, ({t for t, n in best.items() if n == top} if top else set())


@settings(max_examples=200, deadline=None)
@given(inserts, texts, st.sets(st.sampled_from(TENANTS), min_size=1))
def test_prefix_match_agrees_with_brute_force(ops: list, query: str, allowed: set[str]) -> None:
    tree, sent = ApproxTree(), {}
    for text, tenant in ops:
        tree.insert(text, tenant)
        sent.setdefault(tenant, []).append(text)
    tree.check_integrity()
    assert tree.prefix_match(query, allowed) == _model_match(sent, query, allowed)
    for tenant in TENANTS:  # size: distinct prefixes characters == characters of its trie
        prefixes = {s[:i] for s in sent.get(tenant, []) for i in range(1, len(s) + 1)}
        assert tree.size(tenant) == len(prefixes)


@settings(max_examples=200, deadline=None)
@given(inserts, st.sampled_from(TENANTS), texts)
def test_remove_tenant_forgets_only_that_tenant(ops: list, gone: str, query: str) -> None:
    tree, sent = ApproxTree(), {}
    for text, tenant in ops:
        tree.insert(text, tenant)
        sent.setdefault(tenant, []).append(text)
    tree.remove_tenant(gone)
    tree.check_integrity()
    assert tree.size(gone) == 0
    rest = set(TENANTS) - {gone}
    assert tree.prefix_match(query, rest) == _model_match(sent, query, rest)
    assert tree.prefix_match(query, {gone}) == (0, set())


@settings(max_examples=200, deadline=None)
@given(inserts, st.integers(0, 10))
def test_evict_caps_every_tenant_and_keeps_invariants(ops: list, max_size: int) -> None:
    tree = ApproxTree()
    for text, tenant in ops:
        tree.insert(text, tenant)
    tree.evict(max_size)
    tree.check_integrity()
    assert all(size <= max_size for size in tree.sizes().values())


def test_evict_drops_least_recently_used_first() -> None:
    tree = ApproxTree()
    tree.insert("old-request-text", "w0")
    tree.insert("new-request-text", "w0")
    tree.insert("other-text", "w1")
    tree.evict(len("new-request-text"))
    assert tree.prefix_match("new-request-text") == (16, {"w0"})
    assert tree.prefix_match("old-request-text", {"w0"}) == (0, set())
    assert tree.size("w1") == len("other-text")  # under the cap: untouched


def test_shared_prefix_is_counted_once_per_tenant() -> None:
    tree = ApproxTree()
    tree.insert("system prompt. question one", "w0")
    tree.insert("system prompt. question two", "w0")
    tree.insert("system prompt. question two", "w1")
    assert tree.size("w0") == len("system prompt. question one") + len("two")
    assert tree.prefix_match("system prompt. question three") == (len("system prompt. question t"),
                                                                 {"w0", "w1"})
    assert tree.prefix_match("system prompt. question o") == (len("system prompt. question o"),
                                                             {"w0"})
