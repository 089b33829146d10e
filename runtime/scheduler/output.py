"""After the forward: append sampled tokens, decide who finished, hand KV back, and produce one
TokenOutput per request that has something to say."""
from __future__ import annotations

from typing import Any, Optional

from sgl.runtime.io_struct import TokenOutput
from sgl.runtime.sampling.params import SamplingParams
from sgl.runtime.scheduler.batch import RunResult, StepInputs
from sgl.runtime.scheduler.planner import StepPlan
from sgl.runtime.scheduler.req import Req


class StopChecker:
    def __init__(self, tokenizer: Any, eos_token_ids: list[int]) -> None:
        self.tokenizer, self.eos = tokenizer, set(eos_token_ids)

    def stop_ids(self, params: SamplingParams) -> set[int]:
        ids = set(params.stop_token_ids)
        return ids if params.ignore_eos else ids | self.eos

    def min_tokens_ids(self, params: SamplingParams) -> set[int]:
        """Tokens masked until min_new_tokens are out."""
        return set(params.stop_token_ids) | self.eos

    def check(self, req: Req, token: int) -> None:
        params, n = req.sampling_params, len(req.output_ids)
        if n >= params.min_new_tokens:
            if token in req.stop_ids:
                return req.finish({"type": "stop", "matched": token})
            matched = self._match_stop_str(req)
            if matched is not None:
                return req.finish({"type": "stop", "matched": matched})
        if n >= params.max_new_tokens:
            req.finish({"type": "length", "length": params.max_new_tokens})

    def _match_stop_str(self, req: Req) -> Optional[str]:
        stops = req.sampling_params.stop
        if not stops or self.tokenizer is None:
            return None
        # Enough trailing tokens to spell the longest stop string even one byte per token.
        tail = req.output_ids[-(4 * max(map(len, stops)) + 2):]
        text = self.tokenizer.decode(tail, skip_special_tokens=False)
        return next((s for s in stops if s in text), None)


def process_results(plan: StepPlan, step: StepInputs, result: RunResult, sched: Any) -> list[TokenOutput]:
    _store_prompt_logprobs(step, result)
    for i, (req, token) in enumerate(zip(step.sample_reqs, result.next_token_ids)):
        req.append_output(token, result.logprobs[i] if result.logprobs else None,
                          result.top_logprobs[i] if result.top_logprobs else None)
        if req.grammar is not None:
            sched.grammar.after_token(req, token, sched.kv)
        if not req.is_finished:
            sched.stop_checker.check(req, token)
    for req in step.prefill_done:
        req.finish({"type": "length", "length": 0})
    sampled = {id(r) for r in step.sample_reqs}
    outputs = []
    for req in plan.reqs:
        if req.is_finished:
            sched.finish(req)
        elif id(req) not in sampled:
            sched.kv.cache_unfinished(req)  # a prompt chunk: share it as we go
            continue
        outputs.append(make_output(req))
    return outputs


def _store_prompt_logprobs(step: StepInputs, result: RunResult) -> None:
    for i, req in enumerate(step.lp_owners):
        if not req.input_logprobs and req.input_logprob_from == 0:
            req.input_logprobs.append(None)  # the first token has no context to score it
            req.input_top_logprobs.append(None)
        req.input_logprobs.append(result.input_logprobs[i])
        req.input_top_logprobs.append(result.input_top_logprobs[i] if result.input_top_logprobs else None)


def make_output(req: Req) -> TokenOutput:
    start = min(req.num_emitted, req.first_changed)
    lps = req.output_logprobs[start:] if req.return_logprob else []
    tops = req.output_top_logprobs[start:] if req.return_logprob and req.top_logprobs_num else []
    out = TokenOutput(
        rid=req.rid, new_token_ids=req.output_ids[start:], finished_reason=req.finished_reason,
        prompt_tokens=req.prompt_len, cached_tokens=req.cached_tokens,
        completion_tokens=len(req.output_ids), output_logprobs=lps, output_top_logprobs=tops,
        num_rewritten=req.num_emitted - start, meta=dict(req.meta))
    req.num_emitted, req.first_changed = len(req.output_ids), 1 << 62
    if req.input_logprob_from >= 0 and not req.input_logprobs_sent:
        if req.input_logprob_from == 0 and not req.input_logprobs:  # one-token prompt
            req.input_logprobs, req.input_top_logprobs = [None], [None]
        out.input_token_ids = req.origin_input_ids[req.input_logprob_from:]
        out.input_logprobs, out.input_top_logprobs = req.input_logprobs, req.input_top_logprobs
        req.input_logprobs_sent = True
    return out
