"""The scheduler's side of structured generation: compile grammars off the critical path (a
request waits for its grammar without holding anything), mask the logits of constrained rows,
advance grammar states, finish terminated requests, and jump forward over forced text."""
from __future__ import annotations

import logging
from typing import Any, Optional

import torch

from sgl.runtime.grammar import (GrammarManager, allocate_token_bitmask, common_prefix_len,
                                 create_grammar_backend, retokenize_with_jump)
from sgl.runtime.io_struct import abort_reason
from sgl.runtime.sampling.params import SamplingParams
from sgl.runtime.scheduler.req import Req

logger = logging.getLogger("sgl.scheduler")

_KINDS = (("json_schema", "json"), ("regex", "regex"), ("ebnf", "ebnf"), ("structural_tag", "structural_tag"))


def grammar_of(params: SamplingParams) -> Optional[tuple[str, str]]:
    """(kind, text) of the request's constraint, if any."""
    for field, kind in _KINDS:
        text = getattr(params, field)
        if text:
            return kind, text
    return None


class GrammarCoordinator:
    def __init__(self, args: Any, tokenizer: Any, vocab_size: int, eos_ids: list[int]) -> None:
        self.vocab_size, self.tokenizer = vocab_size, tokenizer
        backend = None
        if tokenizer is not None and args.grammar_backend != "none":
            backend = create_grammar_backend(args.grammar_backend, tokenizer, vocab_size,
                                             stop_token_ids=eos_ids or None)
        self.manager = None
        if backend is not None:
            self.manager = GrammarManager(backend, timeout_s=args.grammar_compile_timeout)
        self.jump_forward = not args.disable_jump_forward
        self.waiting: list[Req] = []  # requests whose grammar is still compiling

    def submit(self, req: Req) -> bool:
        """Start compiling req's grammar; True if the request must wait for it."""
        spec = grammar_of(req.sampling_params)
        if spec is None:
            return False
        if self.manager is None:
            req.finish(abort_reason("structured output needs --grammar-backend xgrammar or "
                                    "outlines (and a tokenizer)", 400))
            return False
        req.grammar_handle = self.manager.submit(*spec)
        self.waiting.append(req)
        return True

    def poll(self) -> tuple[list[Req], list[Req]]:
        """(requests whose grammar is ready, requests whose grammar failed)."""
        ready, failed = [], []
        for req in list(self.waiting):
            result = self.manager.poll(req.grammar_handle)
            if result is None:
                continue
            self.waiting.remove(req)
            if isinstance(result, Exception):
                req.finish(abort_reason(f"invalid grammar: {result}", 400))
                failed.append(req)
            else:
                req.grammar = result
                ready.append(req)
        return ready, failed

    def vocab_mask(self, reqs: list[Req], skip: Optional[set[int]] = None,
                   paths: Optional[list[list[int]]] = None) -> Optional[torch.Tensor]:
        """Packed (num_reqs, ceil(vocab/32)) int32 bitmask, bit set = allowed; None when no
        request is constrained. The runner unpacks it on its device (32x fewer bytes to move).
        paths (speculative verify rows): row i's mask is the state after its request's output
        plus paths[i], the draft tokens on the way to that row (each grammar-valid)."""
        if not any(r.grammar is not None for r in reqs):
            return None
        bitmask = allocate_token_bitmask(len(reqs), self.vocab_size)
        # Rows are filled together (the backend may use threads), each grammar moved along its
        # row's path first and back after; a grammar with a second row (a verify tree) sends
        # the rows so far first.
        grammars, rows, held = [], [], set()
        for i, req in enumerate(reqs):
            g = req.grammar
            if g is None or (skip and id(req) in skip):
                bitmask[i] = -1  # every bit set: all tokens allowed
                continue
            if id(g) in held:
                self._fill(grammars, rows, bitmask, paths)
                grammars, rows, held = [], [], set()
            for token in paths[i] if paths else []:
                accepted = g.accept_token(token)
                assert accepted, "draft trees of constrained requests hold grammar-valid tokens only"
            grammars.append(g)
            rows.append(i)
            held.add(id(g))
        self._fill(grammars, rows, bitmask, paths)
        return bitmask

    def _fill(self, grammars: list[Any], rows: list[int], bitmask: torch.Tensor,
              paths: Optional[list[list[int]]]) -> None:
        self.manager.backend.fill_bitmasks(grammars, bitmask, rows)
        for g, row in zip(grammars, rows):
            if paths and paths[row]:
                g.rollback(len(paths[row]))

    def after_token(self, req: Req, token: int, kv: Any) -> None:
        if self.advance(req, token):
            self.jump(req, kv)

    def advance(self, req: Req, token: int) -> bool:
        """Accept an emitted token into req's grammar; finish the request when the token is
        refused or ends the grammar. True while the request goes on."""
        g = req.grammar
        if not g.accept_token(token):
            req.finish(abort_reason(f"token {token} violates the grammar", 500))
            return False
        if g.is_terminated():
            req.finish({"type": "stop", "matched": token})
            return False
        return True

    def wants_jump(self, req: Req) -> bool:
        """Jump-forward is on and the grammar forces text from here."""
        return self._may_jump(req) and bool(req.grammar.jump_forward_str())

    def jump(self, req: Req, kv: Any) -> None:
        if self._may_jump(req):
            self._jump_forward(req, kv)

    def _may_jump(self, req: Req) -> bool:
        # A request asking for hidden states decodes token by token: a jump appends tokens the
        # model never ran (a request may finish on them) and re-spells ones it did.
        return self.jump_forward and req.hidden is None

    def _jump_forward(self, req: Req, kv: Any) -> None:
        text = req.grammar.jump_forward_str()
        if not text:
            return
        old = req.output_ids
        new = retokenize_with_jump(self.tokenizer, old, text)
        if new is None or len(new) <= len(old) or len(new) > req.sampling_params.max_new_tokens:
            return
        keep = req.prompt_len + common_prefix_len(old, new)
        if keep < req.cache_protected_len:  # would cut into KV the radix tree owns
            return
        if not req.grammar.jump_and_retokenize(old, new):
            return
        kv.truncate(req, min(keep, req.num_computed))
        req.replace_output(new, common_prefix_len(old, new))
        req.meta["jump_forward_tokens"] = req.meta.get("jump_forward_tokens", 0) + len(new) - len(old)
