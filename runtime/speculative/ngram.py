"""NGRAM drafting: no draft model. The request's last few tokens are looked up earlier in its own
prompt and output; what followed each match becomes a branch of the draft tree. Copy-heavy
outputs (quoting, extracting, rewriting spans of the prompt) accept long drafts."""
from __future__ import annotations

from typing import Any

import numpy as np

from sgl.runtime.speculative.tree import DraftTree


class NgramDrafter:
    def __init__(self, server_args: Any) -> None:
        _, _, num_draft_tokens = server_args.speculative_settings()
        self.max_nodes = num_draft_tokens - 1
        self.min_window = max(server_args.speculative_ngram_min_match_window_size, 1)
        self.max_window = max(server_args.speculative_ngram_max_match_window_size, self.min_window)
        self.max_breadth = max(server_args.speculative_ngram_max_bfs_breadth, 1)

    def propose(self, reqs: list[Any], limits: list[int]) -> list[DraftTree]:
        return [self.draft(req.all_ids, min(limit, self.max_nodes)) for req, limit in zip(reqs, limits)]

    def draft(self, ids: list[int], max_nodes: int) -> DraftTree:
        if max_nodes <= 0 or len(ids) < self.min_window + 1:
            return DraftTree()
        seq = np.asarray(ids, dtype=np.int64)
        continuations = self._continuations(seq, max_nodes)
        # Merge the continuations into a trie, best match first, then keep its shallowest
        # max_nodes nodes (a breadth-first prefix: ancestor-closed).
        trie, children = DraftTree(), {}
        for cont in continuations:
            parent = -1
            for token in cont.tolist():
                if (parent, token) not in children:
                    children[(parent, token)] = trie.add(token, parent)
                parent = children[(parent, token)]
        depths = trie.depths()
        return trie.subtree(sorted(range(len(trie)), key=lambda j: (depths[j], j))[:max_nodes])

    def _continuations(self, seq: np.ndarray, max_len: int) -> list[np.ndarray]:
        """What followed earlier occurrences of the current suffix: longest match first (up to
        max_window tokens), most recent first among equals, at most max_breadth of them.
        One vectorized pass finds where the last token occurred before; the match of each such
        place is then extended backwards while it lasts: O(n + hits * window)."""
        n = seq.shape[0]
        ends = np.flatnonzero(seq[:n - 1] == seq[n - 1])  # a match ending at j is followed by j + 1
        if ends.size == 0:
            return []
        lengths = np.ones(ends.size, dtype=np.int64)
        alive = np.ones(ends.size, dtype=bool)
        for k in range(1, min(self.max_window, n - 1)):
            alive &= ends - k >= 0
            if not alive.any():
                break
            alive[alive] = seq[ends[alive] - k] == seq[n - 1 - k]
            lengths += alive
        keep = lengths >= self.min_window
        ends, lengths = ends[keep], lengths[keep]
        order = np.lexsort((-ends, -lengths))[: self.max_breadth]  # longest, then most recent
        return [seq[j + 1:j + 1 + max_len] for j in ends[order]]
