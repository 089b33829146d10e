"""The optimal hit rate: the radix trie and the reuse rule against brute-force references."""
from __future__ import annotations

import random

import pytest

from sgl.bench_programs.optimal import PrefixTrie, SentRequest, optimal_cached_tokens


def _lcp(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _random_seqs(rng: random.Random, num: int) -> list[list[int]]:
    # a small alphabet and copied heads, so sequences share prefixes of every length
    seqs: list[list[int]] = []
    for _ in range(num):
        head = rng.choice(seqs)[: rng.randint(0, 12)] if seqs and rng.random() < 0.7 else []
        seqs.append(head + [rng.randint(0, 3) for _ in range(rng.randint(0, 10))])
    return seqs


@pytest.mark.parametrize("seed", range(5))
def test_trie_matches_brute_force(seed):
    rng = random.Random(seed)
    trie, inserted = PrefixTrie(), []
    for seq in _random_seqs(rng, 60):
        assert trie.match_len(seq) == max((_lcp(seq, s) for s in inserted), default=0)
        trie.insert(seq)
        inserted.append(seq)
        distinct = {tuple(s[:k]) for s in inserted for k in range(1, len(s) + 1)}
        assert trie.num_tokens == len(distinct)


def _reference(reqs: list[SentRequest]) -> list[int]:
    """Brute force: a request reuses the longest prefix of its prompt shared with the prompt of
    a request that arrived before it, or with prompt + output of one that finished before it,
    capped at Req.max_prefix_len written out."""
    out = []
    for i, r in enumerate(reqs):
        had = [q.prompt_ids for j, q in enumerate(reqs) if (q.t_send, j) < (r.t_send, i)]
        had += [q.prompt_ids + q.output_ids for q in reqs if q.t_done < r.t_send]
        cap = len(r.prompt_ids) - 1
        if r.logprob_start_len >= 0:
            cap = min(cap, min(r.logprob_start_len, len(r.prompt_ids) - 1) - 1)
        out.append(max(0, min(max((_lcp(r.prompt_ids, h) for h in had), default=0), cap)))
    return out


def test_reuse_rule_cases():
    a = SentRequest(0, [1, 2, 3, 4], [5, 6], t_send=0.0, t_done=1.0)
    during = SentRequest(1, [1, 2, 3, 4, 5, 9], [], t_send=0.5, t_done=2.0)  # A's output not yet had
    after = SentRequest(0, [1, 2, 3, 4, 5, 6, 7], [], t_send=1.5, t_done=3.0)  # extends A's output
    same = SentRequest(2, [1, 2, 3, 4], [], t_send=1.6, t_done=3.0)  # one token must be computed
    scored = SentRequest(3, [1, 2, 3, 4, 8], [], t_send=1.7, t_done=3.0, logprob_start_len=3)
    reused, distinct = optimal_cached_tokens([a, during, after, same, scored])
    assert reused == [0, 4, 6, 3, 2]
    assert distinct == len({1, 2, 3, 4}) + 2 + 1 + 1 + 1  # + [5, 6], 9, 7, 8


@pytest.mark.parametrize("seed", range(5))
def test_reuse_rule_matches_reference_on_random_runs(seed):
    rng = random.Random(seed)
    seqs = _random_seqs(rng, 80)
    reqs = []
    for i in range(40):
        t_send = rng.choice([rng.uniform(0, 10), float(i // 4)])  # some arrive together
        start = rng.choice([-1, -1, rng.randint(0, 8)])
        reqs.append(SentRequest(i % 7, seqs[2 * i], seqs[2 * i + 1][:3], t_send, t_send + rng.uniform(0.1, 3),
                                logprob_start_len=start))
    reused, _ = optimal_cached_tokens(reqs)
    assert reused == _reference(reqs)
    assert any(reused)
