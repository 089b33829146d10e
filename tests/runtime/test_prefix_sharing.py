"""In-batch prefix sharing (issue #26): requests submitted together that share a prefix nobody
has computed yet compute it once. The cache hit rate then equals the optimum the requests' own
prefix trie allows."""
from __future__ import annotations

import random

import pytest

from sgl.runtime.scheduler.prefix_trie import PrefixTrie
from tests.runtime.fake_runner import reference_generate
from tests.runtime.test_scheduler import make, run_all, submit


def _documents(num_docs: int, per_doc: int, doc_len: int, seed: int) -> list[list[int]]:
    """per_doc prompts per document: the document, then a question of its own (interleaved, as
    concurrent programs send them)."""
    rng = random.Random(seed)
    docs = [[rng.randrange(97) for _ in range(doc_len)] for _ in range(num_docs)]
    return [docs[d] + [rng.randrange(97) for _ in range(rng.randrange(3, 12))]
            for _ in range(per_doc) for d in range(num_docs)]


def trie_optimum(prompts: list[list[int]]) -> float:
    """The best hit rate for these prompts: every distinct prefix token computed once."""
    distinct, seen = 0, PrefixTrie()
    for p in prompts:  # tokens past the longest prefix shared with an earlier prompt are new
        distinct += len(p) - seen.match_len(p)
        seen.insert(p)
    total = sum(map(len, prompts))
    return (total - distinct) / total


def _trie_of(prompts: list[list[int]]) -> PrefixTrie:
    trie = PrefixTrie()
    for p in prompts:
        trie.insert(p)
    return trie


def _run_at_trie_optimum(prompts: list[list[int]], max_new: int, policy: str = "fcfs",
                         overlap: bool = False, chunk: int = 256) -> None:
    """Submit together, run: reference tokens, and the hit rate the prompts' trie allows."""
    s, _ = make(policy, overlap=overlap, max_total_tokens=4096, chunked_prefill_size=chunk,
                context_len=512)
    for i, p in enumerate(prompts):
        submit(s, str(i), p, max_new)
    res = run_all(s)
    for i, p in enumerate(prompts):
        assert res[str(i)]["ids"] == reference_generate(p, max_new)
    assert s.stats.cache_hit_rate() == pytest.approx(trie_optimum(prompts))


@pytest.mark.parametrize("policy", ["fcfs", "lpm", "dfs-weight"])
@pytest.mark.parametrize("overlap", [False, True])
def test_shared_uncached_prefixes_are_computed_once(policy, overlap):
    _run_at_trie_optimum(_documents(num_docs=4, per_doc=6, doc_len=90, seed=1), 6, policy, overlap)


def test_shared_prefix_longer_than_a_chunk():
    """Requests wait for every chunk of the shared prefix rather than computing its tail."""
    _run_at_trie_optimum(_documents(num_docs=2, per_doc=5, doc_len=150, seed=2), 4, chunk=64)


def test_no_hold_back_without_a_radix_cache():
    """With the cache off nothing can be shared: requests are admitted at once, as before."""
    s, runner = make(disable_radix_cache=True, max_total_tokens=4096, chunked_prefill_size=1024,
                     context_len=512)
    prompts = _documents(num_docs=2, per_doc=4, doc_len=60, seed=3)
    for i, p in enumerate(prompts):
        submit(s, str(i), p, 3)
    res = run_all(s)
    assert runner.batch_sizes[0] == len(prompts)  # all admitted in the first step
    assert s.stats.total_cached_tokens == 0
    for i, p in enumerate(prompts):
        assert res[str(i)]["ids"] == reference_generate(p, 3)


def test_prefix_trie_match_len():
    trie = _trie_of([[1, 2, 3, 4], [1, 2, 5], [7]])
    assert trie.match_len([1, 2, 3, 4, 9]) == 4
    assert trie.match_len([1, 2, 3, 9]) == 3
    assert trie.match_len([1, 2, 5, 6]) == 3
    assert trie.match_len([1, 9]) == 1
    assert trie.match_len([8]) == 0 and trie.match_len([]) == 0


def test_bundled_model_computes_shared_documents_once():
    """On the real engine: 12 requests over 3 documents of ~120 tokens, sent as one batch, reach
    the trie optimum and give each request's greedy tokens when run alone. (The documents start
    differently: a common start shorter than 32 tokens is computed by each, by design.)"""
    from sgl.runtime.engine import Engine
    with Engine(random_seed=0) as engine:
        encode = lambda text: engine.tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
        docs = [encode(f"{name} wrote: " + "the quick brown fox jumps over a lazy dog " * 12 + "The end.")
                for name in ("Alice", "Bob", "Carol")]
        prompts = [docs[d] + encode(f" Question {q}: who jumps?") for q in range(4) for d in range(3)]
        params = {"max_new_tokens": 3, "temperature": 0}
        stats = engine.scheduler.stats
        before = (stats.total_cached_tokens, stats.total_prompt_tokens)
        together = [o["output_ids"] for o in engine.generate(input_ids=prompts, sampling_params=params)]
        cached, total = stats.total_cached_tokens - before[0], stats.total_prompt_tokens - before[1]
        assert total == sum(map(len, prompts))
        assert cached / total == pytest.approx(trie_optimum(prompts))
        engine.flush_cache()
        assert together == [engine.generate(input_ids=p, sampling_params=params)["output_ids"] for p in prompts]
        engine.call_in_scheduler(lambda s: s.check_pool_invariant())
