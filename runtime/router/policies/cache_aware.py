"""cache_aware (SGLang router semantics): send a request where its prefix is probably cached.

1. Load unbalanced — max - min in-flight > --balance-abs-threshold AND
   max > min * --balance-rel-threshold: the least-loaded worker (shortest queue).
2. Otherwise match the request text against the approximate prefix tree of the healthy
   workers: when the matched share of the text exceeds --cache-threshold, the worker holding
   that longest prefix (the least loaded if several do); else the least-loaded worker, ties to
   the one whose tree is smallest (most cache room).
Either way the text is then recorded in the tree under the chosen worker. Every
--eviction-interval-secs each worker's part of the tree is cut to --max-tree-size characters,
least recently used first."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sgl.runtime.router.config import RouterArgs
from sgl.runtime.router.policies.approx_tree import ApproxTree
from sgl.runtime.router.policies.base import Policy, least_loaded, register_policy
from sgl.runtime.router.worker import Worker


@register_policy("cache_aware")
class CacheAwarePolicy(Policy):
    def __init__(self, args: RouterArgs) -> None:
        super().__init__(args)
        self.tree = ApproxTree()

    def select(self, workers: Sequence[Worker], text: str) -> Worker:
        worker = self._choose(workers, text)
        self.tree.insert(text, worker.url)
        return worker

    def _choose(self, workers: Sequence[Worker], text: str) -> Worker:
        if self.is_imbalanced(workers):
            return least_loaded(workers)
        matched_len, holders = self.tree.prefix_match(text, {w.url for w in workers})
        if text and matched_len / len(text) > self.args.cache_threshold:
            return least_loaded([w for w in workers if w.url in holders])
        return least_loaded(workers, tiebreak=lambda w: self.tree.size(w.url))

    def is_imbalanced(self, workers: Sequence[Worker]) -> bool:
        loads = [w.load for w in workers]
        max_load, min_load = max(loads), min(loads)
        return (max_load - min_load > self.args.balance_abs_threshold
                and max_load > min_load * self.args.balance_rel_threshold)

    def remove_worker(self, url: str) -> None:
        self.tree.remove_tenant(url)

    def reset(self) -> None:
        self.tree = ApproxTree()

    def maintain(self) -> None:
        self.tree.evict(self.args.max_tree_size)

    def view(self) -> dict[str, Any]:
        return {"name": self.name, "tree_sizes": self.tree.sizes(),
                "cache_threshold": self.args.cache_threshold,
                "balance_abs_threshold": self.args.balance_abs_threshold,
                "balance_rel_threshold": self.args.balance_rel_threshold}
