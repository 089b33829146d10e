"""Speculative decoding: draft a tree of tokens per request, verify it in one target forward.

`SpecDecoder` is the scheduler's handle: `propose` sets `req.draft` on the running requests
before the step is planned; the scheduler's batch builder turns each draft into verify rows with
a tree mask; `accept` (in scheduler/output.py) keeps the accepted tokens' KV and frees the rest;
`observe` passes the target's hidden states to drafters that need them (EAGLE).

Constrained requests speculate too: their trees keep only the nodes the grammar allows after
the path to them (`grammar_subtree`), each verify row samples under the grammar state of its own
path, and acceptance advances the grammar token by token, stopping where jump-forward takes over
(scheduler/output.py), so the output is the one decoding without speculation gives."""
from __future__ import annotations

from typing import Any, Optional

import torch

from sgl.runtime.speculative.tree import DraftTree, verify

__all__ = ["DraftTree", "SpecDecoder", "grammar_subtree", "verify"]


def grammar_subtree(tree: DraftTree, grammar: Any) -> DraftTree:
    """The nodes of `tree` whose whole path the grammar accepts from its current state (which
    it is left in)."""
    allowed = []
    for j, path in enumerate(tree.paths()[1:]):
        accepted = 0
        while accepted < len(path) and grammar.accept_token(path[accepted]):
            accepted += 1
        grammar.rollback(accepted)
        if accepted == len(path):
            allowed.append(j)
    return tree.subtree(allowed)


class SpecDecoder:
    def __init__(self, server_args: Any, runner: Any) -> None:
        self.algorithm = server_args.speculative_algorithm
        self.num_steps, self.topk, self.num_draft_tokens = server_args.speculative_settings()
        if self.algorithm == "NGRAM":
            from sgl.runtime.speculative.ngram import NgramDrafter
            self.drafter: Any = NgramDrafter(server_args)
        else:
            from sgl.runtime.speculative.draft_worker import ModelDrafter
            self.drafter = ModelDrafter(server_args, runner)
        # Table columns a draft may use past the sequence: the verify rows, or the draft's
        # scratch tokens (at most topk per step), whichever is more.
        self.scratch_cols = max(self.num_draft_tokens, self.topk * self.num_steps + 1)
        self.table_width = runner.req_to_token_pool.max_context_len
        self.context_len = runner.context_len
        # Totals: request-verifications, tokens they produced, draft tokens they checked; and
        # the totals at the last log line.
        self.num_verify = self.num_emitted = self.num_drafted = 0
        self._logged = (0, 0, 0)

    @property
    def needs_hidden(self) -> bool:
        return self.drafter.needs_hidden

    def eligible(self, req: Any) -> bool:
        """Decoding with at least two tokens to go. The rest run as plain one-token steps in
        the same batch (a draft of size 0)."""
        return (req.seq_len - req.num_computed == 1 and req.remaining_new_tokens() >= 2
                and req.seq_len + self.scratch_cols < min(self.table_width, self.context_len))

    def propose(self, running: list[Any], kv: Any) -> None:
        for req in running:
            req.draft = None
        reqs = [r for r in running if self.eligible(r)]
        if not reqs:
            return
        limits = [min(self.num_draft_tokens - 1, r.remaining_new_tokens() - 1) for r in reqs]
        for req, tree in zip(reqs, self.drafter.propose(reqs, limits, kv)):
            if req.grammar is not None:
                tree = grammar_subtree(tree, req.grammar)
            req.draft = tree if len(tree) else None

    def observe(self, req: Any, start: int, hidden: Optional[torch.Tensor]) -> None:
        self.drafter.observe(req, start, hidden)

    def release(self, req: Any) -> None:
        req.draft = None
        self.drafter.release(req)

    def record(self, req: Any, emitted: int, drafted: int) -> None:
        self.num_verify += 1
        self.num_emitted += emitted
        self.num_drafted += drafted
        req.meta["spec_verify_ct"] = req.meta.get("spec_verify_ct", 0) + 1
        req.meta["spec_accepted_tokens"] = req.meta.get("spec_accepted_tokens", 0) + emitted - 1

    def take_interval(self) -> tuple[float, float]:
        """(accept len, accept rate) since the last call: tokens per verification, and the
        share of drafted tokens accepted."""
        now = (self.num_verify, self.num_emitted, self.num_drafted)
        n, e, d = (a - b for a, b in zip(now, self._logged))
        self._logged = now
        return (e / n if n else 1.0), ((e - n) / d if d else 0.0)
