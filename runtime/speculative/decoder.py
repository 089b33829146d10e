"""`SpecDecoder`: the scheduler's planner for speculative decoding (see __init__.py). CPU only; a
model drafter runs in the runner, reached through `Runner.draft`."""
from __future__ import annotations

from typing import Any, Optional

import torch

from sgl.runtime.scheduler.contract import (DraftInputs, DraftRequest, Observation, Runner,
                                            StepInputs)
from sgl.runtime.scheduler.kv_manager import KVManager
from sgl.runtime.speculative.ngram import NgramDrafter
from sgl.runtime.speculative.tree import DraftTree


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


def scratch_per_request(algorithm: str, num_steps: int, topk: int) -> int:
    """Scratch KV slots a model drafter may fill per request and proposal: the root's draft K/V
    (a STANDALONE model reads the root token itself; an EAGLE head stops one position short),
    then at most topk nodes at each further tree step."""
    return (1 if algorithm == "STANDALONE" else 0) + topk * (num_steps - 1)


class SpecDecoder:
    def __init__(self, server_args: Any, runner: Runner, kv: KVManager) -> None:
        self.algorithm = server_args.speculative_algorithm
        self.num_steps, self.topk, self.num_draft_tokens = server_args.speculative_settings()
        self.runner, self.kv = runner, kv
        self.ngram = NgramDrafter(server_args) if self.algorithm == "NGRAM" else None
        self.needs_hidden = self.algorithm in ("EAGLE", "EAGLE3")
        self.scratch = scratch_per_request(self.algorithm, self.num_steps, self.topk)
        # Table columns a draft may use past the sequence: the verify rows, or the draft's
        # scratch tokens, whichever is more.
        self.scratch_cols = max(self.num_draft_tokens, self.topk * self.num_steps + 1)
        self.max_len = min(runner.info.table_width, runner.info.context_len)
        # For a model drafter: what the steps since its last call computed, and who left.
        self._observed: list[Observation] = []
        self._released: list[str] = []
        # Totals: request-verifications, tokens they produced, draft tokens they checked; and
        # the totals at the last log line.
        self.num_verify = self.num_emitted = self.num_drafted = 0
        self._logged = (0, 0, 0)

    def eligible(self, req: Any) -> bool:
        """Decoding with at least two tokens to go. The rest run as plain one-token steps in
        the same batch (a draft of size 0)."""
        return (req.seq_len - req.num_computed == 1 and req.remaining_new_tokens() >= 2
                and req.seq_len + self.scratch_cols < self.max_len)

    # -- before the step: drafts --------------------------------------------------------------
    def propose(self, running: list[Any]) -> None:
        for req in running:
            req.draft = None
        reqs = [r for r in running if self.eligible(r)]
        limits = [min(self.num_draft_tokens - 1, r.remaining_new_tokens() - 1) for r in reqs]
        if self.ngram is not None:
            trees = self.ngram.propose(reqs, limits)
        else:
            trees = self._draft_with_model(reqs, limits)
        for req, tree in zip(reqs, trees):
            if req.grammar is not None:
                tree = grammar_subtree(tree, req.grammar)
            req.draft = tree if len(tree) else None

    def _draft_with_model(self, reqs: list[Any], limits: list[int]) -> list[DraftTree]:
        """Ask the runner's drafter, handing it scratch slots (freed again right after) and what
        happened since its last call. With no room for scratch, nothing is drafted this step."""
        scratch = self.kv.alloc(len(reqs) * self.scratch) if reqs else torch.empty(0, dtype=torch.int64)
        if scratch is None:
            reqs, limits, scratch = [], [], torch.empty(0, dtype=torch.int64)
        requests = [DraftRequest(r.rid, r.num_admissions, r.req_pool_idx, r.all_ids, r.num_computed,
                                 r.kv_indices, scratch[k * self.scratch:(k + 1) * self.scratch], limit)
                    for k, (r, limit) in enumerate(zip(reqs, limits))]
        inputs = DraftInputs(requests, self.kv.flush_table(), self._observed, self._released)
        self._observed, self._released = [], []
        try:
            trees = self.runner.draft(inputs)
        finally:
            self.kv.free(scratch)
        return trees

    # -- after the step -------------------------------------------------------------------------
    def observe_step(self, plan: Any, step: StepInputs, book: Any) -> None:
        """Record, for the model drafter, the positions each request computed and (EAGLE) the
        rows of the captured hidden states that hold them."""
        if self.ngram is not None:
            return
        b, row_start = step.batch, 0
        for req, n, start in zip(plan.reqs, b.extend_lens_cpu, b.prefix_lens_cpu):
            rows: list[int] = []
            if step.capture_hidden:
                verified = book.verify.get(id(req))
                rows = ([row_start + k for k in verified.kept] if verified is not None
                        else list(range(row_start, row_start + n)))
            self._observed.append(Observation(req.rid, req.num_admissions, start, rows))
            row_start += n

    def release(self, req: Any) -> None:
        req.draft = None
        if self.ngram is None:
            self._released.append(req.rid)

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


def optional_spec(server_args: Any, runner: Runner, kv: KVManager) -> Optional[SpecDecoder]:
    return SpecDecoder(server_args, runner, kv) if server_args.speculative_algorithm else None
