"""Parsing and validating a generate request (SGLang's /generate shape) or an embedding request
(/encode) into per-sequence scheduler messages. Every error is a ValueError naming the field."""
from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass
from typing import Any, Optional

from sgl.runtime.disaggregation.messages import BOOTSTRAP_FIELDS, parse_bootstrap
from sgl.runtime.io_struct import TokenizedGenerateReq
from sgl.runtime.matryoshka import Matryoshka
from sgl.runtime.request_fields import KNOWN, check_extra_fields
from sgl.runtime.request_options import RequestPolicy, parse_hidden_states, parse_priority
from sgl.runtime.sampling.params import SamplingParams

_FIELDS = {"text", "input_ids", "sampling_params", "return_logprob", "logprob_start_len",
           "top_logprobs_num", "return_text_in_logprobs", "stream", "rid", "priority",
           "return_hidden_states", *BOOTSTRAP_FIELDS} | KNOWN

MAX_TOP_LOGPROBS_NUM = 20  # OpenAI's limit for top_logprobs


@dataclass
class ParsedRequest:
    reqs: list[TokenizedGenerateReq]   # one per sequence (n expanded)
    is_batch: bool
    stream: bool
    return_text_in_logprobs: bool
    prompts: list[list[int]]           # distinct prompts, for n>1 prefix warm-up


def parse_generate(obj: dict[str, Any], tokenize: Any, vocab_size: int, context_len: int,
                   grammar_backend: str = "xgrammar", disaggregation_mode: str = "null",
                   policy: RequestPolicy = RequestPolicy()) -> ParsedRequest:
    unknown = sorted(set(obj) - _FIELDS)
    if unknown:
        raise ValueError(f"unknown field(s): {', '.join(unknown)}")
    check_extra_fields(obj)
    texts, ids, is_batch = _prompts(obj)
    prompts = ids if ids is not None else [_tokenize(tokenize, t) for t in texts]
    for i, p in enumerate(prompts):
        _check_prompt(p, i, vocab_size, context_len)
    params = _sampling_params(obj.get("sampling_params"), len(prompts), vocab_size)
    for sp in params:
        _check_grammar(sp, grammar_backend)
        _check_stops(sp, tokenize is not None)
    return_logprob = _per_prompt(obj, "return_logprob", False, bool, len(prompts))
    start = _per_prompt(obj, "logprob_start_len", -1, int, len(prompts))
    top = _per_prompt(obj, "top_logprobs_num", 0, int, len(prompts))
    stream = _typed(obj, "stream", False, bool)
    text_lp = _typed(obj, "return_text_in_logprobs", False, bool)
    rids = _rids(obj.get("rid"), len(prompts))
    priority = parse_priority(obj, policy)
    hidden = parse_hidden_states(obj, len(prompts), policy, disaggregation_mode)
    reqs = []
    for i, (prompt, sp) in enumerate(zip(prompts, params)):
        _clip_max_new_tokens(sp, len(prompt), context_len)
        _check_logprob_fields(top[i], start[i], len(prompt))
        lp_start = start[i] if return_logprob[i] else -1
        if return_logprob[i] and lp_start < 0:
            lp_start = len(prompt)  # SGLang: -1/None means output logprobs only
        for k in range(sp.n):
            one = dataclasses.replace(sp, n=1)
            if sp.n > 1 and sp.seed is not None:
                one.seed = sp.seed + k
            rid = rids[i] if sp.n == 1 else f"{rids[i]}-{k}"
            reqs.append(TokenizedGenerateReq(rid, prompt, one, return_logprob[i], lp_start, top[i],
                                             stream, priority, return_hidden_states=hidden[i]))
    if len({r.rid for r in reqs}) != len(reqs):  # e.g. rid "a" with n=2 beside a rid "a-0"
        raise ValueError("rid: the ids of one batch (with their n copies, rid-0, rid-1, ...) "
                         "must be distinct")
    _attach_bootstrap(obj, reqs, [sp.n for sp in params], disaggregation_mode)
    return ParsedRequest(reqs, is_batch or any(sp.n > 1 for sp in params), stream, text_lp, prompts)


def _attach_bootstrap(obj: dict[str, Any], reqs: list[TokenizedGenerateReq], num_copies: list[int],
                      disaggregation_mode: str) -> None:
    """Prefill-decode disaggregation: where each sequence's KV comes from (or goes to)."""
    boots = parse_bootstrap(obj, num_copies)
    if boots is None:
        return
    if disaggregation_mode == "null":
        raise ValueError("bootstrap_room: this server is not disaggregated (--disaggregation-mode "
                         "null); send requests without bootstrap fields")
    for req, boot in zip(reqs, boots):
        req.bootstrap = boot


_ENCODE_FIELDS = {"text", "input_ids", "rid", "dimensions"}


def parse_encode(obj: dict[str, Any], tokenize: Any, vocab_size: int, context_len: int,
                 matryoshka: Optional[Matryoshka] = None) -> ParsedRequest:
    """An embedding request (SGLang's /encode shape: text or input_ids, one or a batch; rid;
    dimensions, one for every prompt, when the model is Matryoshka-trained)."""
    unknown = sorted(set(obj) - _ENCODE_FIELDS)
    if unknown:
        raise ValueError(f"unknown field(s) for an embedding request: {', '.join(unknown)}")
    dimensions = (matryoshka or Matryoshka(hidden_size=0)).check(obj.get("dimensions"))
    texts, ids, is_batch = _prompts(obj)
    prompts = ids if ids is not None else [_tokenize(tokenize, t) for t in texts]
    for i, p in enumerate(prompts):
        _check_prompt(p, i, vocab_size, context_len)
    rids = _rids(obj.get("rid"), len(prompts))
    reqs = [TokenizedGenerateReq(rid, prompt, SamplingParams(max_new_tokens=0), is_embedding=True,
                                 dimensions=dimensions) for rid, prompt in zip(rids, prompts)]
    return ParsedRequest(reqs, is_batch, False, False, prompts)


def _prompts(obj: dict[str, Any]) -> tuple[Optional[list[str]], Optional[list[list[int]]], bool]:
    text, ids = obj.get("text"), obj.get("input_ids")
    if (text is None) == (ids is None):
        raise ValueError("exactly one of text or input_ids must be given")
    if text is not None:
        if isinstance(text, str):
            return [text], None, False
        if isinstance(text, list) and text and all(isinstance(t, str) for t in text):
            return list(text), None, True
        raise ValueError("text must be a string or a non-empty list of strings")
    if isinstance(ids, list) and ids and all(_is_int(t) for t in ids):
        return None, [list(ids)], False
    if isinstance(ids, list) and ids and all(isinstance(p, list) and all(_is_int(t) for t in p) for p in ids):
        return None, [list(p) for p in ids], True
    raise ValueError("input_ids must be a non-empty list of token ids or a list of such lists")


def _tokenize(tokenize: Any, text: str) -> list[int]:
    if tokenize is None:
        raise ValueError("text given but the tokenizer is disabled (skip_tokenizer_init); send input_ids")
    return tokenize(text)


def _check_prompt(ids: list[int], i: int, vocab_size: int, context_len: int) -> None:
    if not ids:
        raise ValueError(f"prompt {i} is empty: text or input_ids must hold at least one token")
    bad = next((t for t in ids if not 0 <= t < vocab_size), None)
    if bad is not None:
        raise ValueError(f"input_ids: token id {bad} is outside the vocabulary [0, {vocab_size})")
    if len(ids) >= context_len:
        raise ValueError(f"prompt is {len(ids)} tokens, the model's context length is {context_len}; "
                         "shorten the input (text/input_ids)")


def _check_logprob_fields(top: int, start: int, prompt_len: int) -> None:
    # top logprobs cost a (tokens x top) table in the response: capped as the OpenAI routes are
    if not 0 <= top <= MAX_TOP_LOGPROBS_NUM:
        raise ValueError(f"top_logprobs_num must be in [0, {MAX_TOP_LOGPROBS_NUM}], got {top}")
    if not -1 <= start <= prompt_len:
        raise ValueError(f"logprob_start_len must be -1 (output only) or in [0, {prompt_len}] "
                         f"(the prompt's length), got {start}")


def _sampling_params(raw: Any, n: int, vocab_size: int) -> list[SamplingParams]:
    if isinstance(raw, list):
        if len(raw) != n:
            raise ValueError(f"sampling_params has {len(raw)} entries for {n} prompts")
        out = [SamplingParams.from_dict(r) for r in raw]
    else:
        out = [SamplingParams.from_dict(raw) for _ in range(n)]
    for sp in out:
        sp.verify(vocab_size)
    return out


def _check_grammar(sp: SamplingParams, backend: str) -> None:
    from sgl.runtime.grammar import validate
    from sgl.runtime.scheduler.grammar import grammar_of
    spec = grammar_of(sp)
    if spec is None:
        return
    if backend == "none":
        raise ValueError("sampling_params: structured output (regex/json_schema/ebnf/structural_tag) "
                         "needs --grammar-backend xgrammar or outlines")
    field = {"json": "json_schema"}.get(spec[0], spec[0])
    try:
        validate(spec[0], spec[1], backend)
    except ValueError as e:
        raise ValueError(f"sampling_params.{field}: {e}") from None


def _check_stops(sp: SamplingParams, has_tokenizer: bool) -> None:
    if sp.stop_regex and not has_tokenizer:
        raise ValueError("sampling_params.stop_regex needs the tokenizer, which the server skips "
                         "(--skip-tokenizer-init); use stop_token_ids")


def _clip_max_new_tokens(sp: SamplingParams, prompt_len: int, context_len: int) -> None:
    sp.max_new_tokens = min(sp.max_new_tokens, context_len - prompt_len)
    sp.min_new_tokens = min(sp.min_new_tokens, sp.max_new_tokens)


def _per_prompt(obj: dict[str, Any], key: str, default: Any, kind: type, n: int) -> list[Any]:
    v = obj.get(key)
    if v is None:
        return [default] * n
    if isinstance(v, list):
        if len(v) != n:
            raise ValueError(f"{key} has {len(v)} entries for {n} prompts")
        return [_check_type(key, x if x is not None else default, kind) for x in v]
    return [_check_type(key, v, kind)] * n


def _typed(obj: dict[str, Any], key: str, default: Any, kind: type) -> Any:
    v = obj.get(key)
    return default if v is None else _check_type(key, v, kind)


def _check_type(key: str, v: Any, kind: type) -> Any:
    ok = isinstance(v, kind) and (kind is bool or not isinstance(v, bool))
    if not ok:
        raise ValueError(f"{key} must be of type {kind.__name__}, got {v!r}")
    return v


def _rids(rid: Any, n: int) -> list[str]:
    if rid is None:
        return [uuid.uuid4().hex for _ in range(n)]
    if isinstance(rid, str) and n == 1:
        return [rid]
    if isinstance(rid, list) and len(rid) == n and all(isinstance(r, str) for r in rid):
        if len(set(rid)) != n:
            raise ValueError("rid: the ids of one batch must be distinct")
        return list(rid)
    raise ValueError("rid must be a string (one prompt) or a list of strings, one per prompt")


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)
