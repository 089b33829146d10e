"""xgrammar backend: JSON schema, regex, EBNF and structural tags over a pushdown automaton
with precomputed token masks. Jump-forward strings come from the matcher itself."""
from __future__ import annotations

import json
import os
from typing import Any

import torch
import xgrammar as xgr

from .base import (
    ANY_JSON_OBJECT,
    ANY_JSON_OBJECT_SCHEMA,
    Grammar,
    GrammarBackend,
    backend_error_message,
    parse_json,
    register_grammar_backend,
    rewrite_schema,
    set_token_bits,
)

_WHAT = {"json": "JSON schema", "regex": "regex", "ebnf": "EBNF grammar",
         "structural_tag": "structural tag"}


class XGrammarGrammar(Grammar):
    def __init__(self, compiled: xgr.CompiledGrammar, backend: XGrammarBackend) -> None:
        self._compiled = compiled
        self._backend = backend
        self._matcher = xgr.GrammarMatcher(compiled)
        self._num_accepted = 0

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        if self._matcher.is_terminated():  # xgrammar refuses to build a mask after the stop token
            set_token_bits(bitmask[row], self._backend.stop_token_ids, self._backend.vocab_size)
        else:
            self._matcher.fill_next_token_bitmask(bitmask, row)

    def accept_token(self, token_id: int) -> bool:
        if self._matcher.is_terminated() or not self._matcher.accept_token(int(token_id)):
            return False
        self._num_accepted += 1
        return True

    def rollback(self, num_tokens: int) -> None:
        if num_tokens <= 0:
            return
        assert num_tokens <= self._num_accepted, (num_tokens, self._num_accepted)
        self._matcher.rollback(num_tokens)
        self._num_accepted -= num_tokens

    def is_terminated(self) -> bool:
        return self._matcher.is_terminated()

    def jump_forward_str(self) -> str | None:
        if self._matcher.is_terminated():
            return None
        s = self._matcher.find_jump_forward_string()
        return s if len(s) >= self._backend.jump_forward_min_chars else None



@register_grammar_backend("xgrammar")
class XGrammarBackend(GrammarBackend):
    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: list[int] | None,
                 any_whitespace: bool, jump_forward_min_chars: int) -> None:
        super().__init__(tokenizer, vocab_size, stop_token_ids, any_whitespace,
                         jump_forward_min_chars)
        info = tokenizer_info(tokenizer, vocab_size, self.stop_token_ids)
        # GrammarManager keeps the LRU cache of compiled grammars; xgrammar's would double it.
        self._compiler = xgr.GrammarCompiler(info, max_threads=min(8, os.cpu_count() or 1),
                                             cache_enabled=False)
        # A mask can cost milliseconds a row (a bounded repeat such as [a-z]{1,8} leaves every
        # word token to be checked at run time), so a batch's rows are filled on several threads.
        self.fill_threads = max(1, min(8, (os.cpu_count() or 1) // 2))
        self._batch_matcher: xgr.BatchGrammarMatcher | None = None

    def fill_bitmasks(self, grammars: list[Grammar], bitmask: torch.Tensor, rows: list[int]) -> None:
        live = []
        for g, row in zip(grammars, rows):
            if g.is_terminated():
                g.fill_bitmask(bitmask, row)  # the stop tokens alone: xgrammar refuses these
            else:
                live.append((g, row))
        if self.fill_threads < 2 or len(live) < 2:
            for g, row in live:
                g.fill_bitmask(bitmask, row)
            return
        if self._batch_matcher is None:
            self._batch_matcher = xgr.BatchGrammarMatcher(self.fill_threads)
        self._batch_matcher.batch_fill_next_token_bitmask(
            [g._matcher for g, _ in live], bitmask, [row for _, row in live])

    def _compile(self, kind: str, text: str) -> XGrammarGrammar:
        try:
            compiled = self._compile_spec(kind, text)
        except (RuntimeError, ValueError, TypeError) as e:
            raise ValueError(f"invalid {_WHAT[kind]}: {backend_error_message(e)}") from None
        return XGrammarGrammar(compiled, self)

    def _compile_spec(self, kind: str, text: str) -> xgr.CompiledGrammar:
        if kind == "json":
            schema = ANY_JSON_OBJECT_SCHEMA if text == ANY_JSON_OBJECT else text
            schema = json.dumps(rewrite_schema(parse_json(schema, "JSON schema"), _length_pattern))
            return self._compiler.compile_json_schema(schema, any_whitespace=self.any_whitespace)
        if kind == "regex":
            return self._compiler.compile_regex(text)
        if kind == "ebnf":
            return self._compiler.compile_grammar(text)
        return self._compiler.compile_structural_tag(text)


def _length_pattern(node: dict) -> dict | None:
    """xgrammar 0.2.8 spells a string with minLength/maxLength as repeats of "any character
    but quote, backslash, CR, LF": raw tabs and other control characters pass (invalid JSON).
    The same length as a pattern excludes them (escapes were not allowed there either)."""
    if node.get("type") != "string" or "pattern" in node or "format" in node:
        return None
    lo, hi = node.get("minLength"), node.get("maxLength")
    if not isinstance(lo, (int, type(None))) or not isinstance(hi, (int, type(None))) or (
            lo is None and hi is None):
        return None
    rest = {k: v for k, v in node.items() if k not in ("minLength", "maxLength")}
    return {**rest, "pattern": f'^[^\\x00-\\x1f"\\\\]{{{lo or 0},{"" if hi is None else hi}}}$'}


def tokenizer_info(tokenizer: Any, vocab_size: int, stop_token_ids: list[int]) -> xgr.TokenizerInfo:
    """xgrammar's tokenizer info, with special tokens other than the stop tokens made
    unmatchable: from_huggingface treats e.g. <|im_start|> as the text "<|im_start|>", so it
    could appear inside a JSON string and vanish under skip_special_tokens."""
    info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size,
                                              stop_token_ids=stop_token_ids)
    if getattr(tokenizer, "backend_tokenizer", None) is None:  # not a fast tokenizer: keep as is
        return info
    vocab = tokenizer.get_vocab()
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    special = (set(tokenizer.all_special_ids) | {i for i, t in added.items() if t.special}) - set(
        stop_token_ids)
    encoded = [""] * min(max(vocab.values()) + 1, vocab_size)
    for piece, token_id in vocab.items():
        if token_id not in special and token_id < vocab_size:  # ids past the model's vocab never occur
            encoded[token_id] = piece
    return xgr.TokenizerInfo(encoded, info.vocab_type, vocab_size=vocab_size,
                             stop_token_ids=stop_token_ids, add_prefix_space=info.add_prefix_space)
