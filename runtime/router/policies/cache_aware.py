"""cache_aware (SGLang router semantics): send a request where its prefix is probably cached.

1. Load unbalanced — max - min waiting requests > --balance-abs-threshold AND
   max > min * --balance-rel-threshold: the worker with the fewest waiting (then in-flight).
   "Waiting" counts requests sent but not yet answered a byte (for a stream: before its first
   token), i.e. queued or prefilling on the worker. SGLang's router counts all in-flight
   requests; but a decoding request costs a worker little (a decode step at batch 64 takes ~1.2x
   one at batch 16), while sending a request away from the worker that caches its prefix costs
   a full prefill there and splits its group over two caches. Counting in-flight requests, a
   closed loop of 64 clients on 2 workers tripped the threshold on transient skews (a worker
   busy with a burst of new prefixes holds more of the clients) and split 2-4% of requests.
2. Otherwise match the request text against the approximate prefix tree of the healthy
   workers: when the matched share of the text exceeds --cache-threshold, the worker holding
   that longest prefix (the least busy if several do); else (a new prefix) the worker whose
   tree is smallest, ties to the least busy. As SGLang's router does: new prefixes spread by
   cache room, not by the momentary load, so each worker's pool gets an even share of them
   (going by load, 2 workers took 37 and 28 of 64 groups and the fuller pool evicted).
Either way the text is then recorded in the tree under the chosen worker. Every
--eviction-interval-secs each worker's part of the tree is cut to --max-tree-size characters,
least recently used first."""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from sgl.runtime.router.config import RouterArgs
from sgl.runtime.router.policies.approx_tree import ApproxTree
from sgl.runtime.router.policies.base import Policy, register_policy
from sgl.runtime.router.worker import Worker


@register_policy("cache_aware")
class CacheAwarePolicy(Policy):
    def __init__(self, args: RouterArgs) -> None:
        super().__init__(args)
        self.tree = ApproxTree()
        # why each request went where it did: cache (prefix match), new_prefix, imbalanced
        self.decisions: Counter[str] = Counter()

    def select(self, workers: Sequence[Worker], text: str) -> Worker:
        worker = self._choose(workers, text)
        self.tree.insert(text, worker.url)
        return worker

    def _choose(self, workers: Sequence[Worker], text: str) -> Worker:
        if self.is_imbalanced(workers):
            self.decisions["imbalanced"] += 1
            return least_busy(workers)
        matched_len, holders = self.tree.prefix_match(text, {w.url for w in workers})
        if text and matched_len / len(text) > self.args.cache_threshold:
            self.decisions["cache"] += 1
            return least_busy([w for w in workers if w.url in holders])
        self.decisions["new_prefix"] += 1
        return min(workers, key=lambda w: (self.tree.size(w.url), w.num_waiting, w.load, w.num_requests))

    def is_imbalanced(self, workers: Sequence[Worker]) -> bool:
        loads = [w.num_waiting for w in workers]
        max_load, min_load = max(loads), min(loads)
        return (max_load - min_load > self.args.balance_abs_threshold
                and max_load > min_load * self.args.balance_rel_threshold)

    def remove_worker(self, url: str) -> None:
        self.tree.remove_tenant(url)

    def reset(self) -> None:
        self.tree = ApproxTree()
        self.decisions.clear()

    def maintain(self) -> None:
        self.tree.evict(self.args.max_tree_size)

    def view(self) -> dict[str, Any]:
        return {"name": self.name, "tree_sizes": self.tree.sizes(),
                "decisions": dict(self.decisions),
                "cache_threshold": self.args.cache_threshold,
                "balance_abs_threshold": self.args.balance_abs_threshold,
                "balance_rel_threshold": self.args.balance_rel_threshold}


def least_busy(workers: Sequence[Worker], tiebreak: Callable[[Worker], Any] = lambda w: 0
               ) -> Worker:
    """Fewest waiting requests, then fewest in flight; then `tiebreak`, then fewest routed."""
    return min(workers, key=lambda w: (w.num_waiting, w.load, tiebreak(w), w.num_requests))
