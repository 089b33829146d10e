"""The optimal cache hit rate of a run, computed from the requests it actually sent.

Rule (the same one the runtime's `Req.max_prefix_len` applies): requests are taken in arrival
order. A request may reuse the longest prefix of its prompt that some earlier request already
had, where a request "has" its prompt from its arrival and its prompt plus every output token
from its completion. The reuse is capped so that the runtime still computes what it must: at
least the last prompt token (its logits pick the first output token), and, when prompt logprobs
start at position p (`select` scores its choices this way), every token from p - 1 on. The
optimum is the sum of these reusable lengths over the sum of prompt lengths: each shared token
is computed once, by the first request that had it. The cache is taken as unbounded; a measured
rate below this can come from eviction, from requests sharing an uncached prefix that are
admitted in the same step, or from a finished request whose last output token has no KV (the
runtime feeds a sampled token to the model only on the next step)."""
from __future__ import annotations

from dataclasses import dataclass

from sgl.runtime.scheduler.prefix_trie import PrefixTrie


@dataclass
class SentRequest:
    """One prompt as the runtime saw it (a batched call is one of these per prompt)."""
    program: int
    prompt_ids: list[int]
    output_ids: list[int]
    t_send: float
    t_done: float
    logprob_start_len: int = -1  # first prompt position whose logprob was asked (-1: none)
    cached_tokens: int = 0       # what the runtime reported reusing
    completion_tokens: int = 0

    def max_reuse(self) -> int:
        """`Req.max_prefix_len` at admission."""
        prompt_len = len(self.prompt_ids)
        cap = prompt_len - 1
        if self.logprob_start_len >= 0:
            cap = min(cap, max(min(self.logprob_start_len, prompt_len - 1) - 1, 0))
        return max(cap, 0)


def optimal_cached_tokens(requests: list[SentRequest]) -> tuple[list[int], int]:
    """Per request (in the given order) the tokens the rule above lets it reuse, and the
    number of distinct tokens the run touched (what an unbounded cache would hold)."""
    events = []
    for i, r in enumerate(requests):
        events.append((r.t_send, 0, i))
        events.append((r.t_done, 1, i))
    events.sort()  # at equal times arrivals come first: a reply cannot feed a request sent with it
    trie, reused = PrefixTrie(), [0] * len(requests)
    for _, is_done, i in events:
        r = requests[i]
        if is_done:
            trie.insert(r.prompt_ids + r.output_ids)
        else:
            reused[i] = min(trie.match_len(r.prompt_ids), r.max_reuse())
            trie.insert(r.prompt_ids)
    return reused, trie.num_tokens
