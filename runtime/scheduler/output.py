"""After the forward: append sampled tokens, decide who finished, hand KV back, and produce one
TokenOutput per request that has something to say."""
from __future__ import annotations

import functools
import re
from collections.abc import Callable
from re import _parser as re_parser  # the public sre_parse alias is deprecated since 3.11
from typing import Any, Optional

from sgl.runtime.io_struct import TokenOutput, abort_reason
from sgl.runtime.sampling.params import SamplingParams
from sgl.runtime.scheduler.batch import StepBook, VerifyRows
from sgl.runtime.scheduler.contract import RunResult, StepInputs
from sgl.runtime.scheduler.grammar import GrammarCoordinator
from sgl.runtime.scheduler.kv_manager import KVManager
from sgl.runtime.scheduler.planner import StepPlan
from sgl.runtime.scheduler.req import Req, ReqState
from sgl.runtime.speculative.decoder import SpecDecoder
from sgl.runtime.speculative.tree import verify


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
            if matched is None:
                matched = self._match_stop_regex(req)
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

    def _match_stop_regex(self, req: Req) -> Optional[str]:
        """The first stop_regex pattern found in the output's tail (the finish reason's
        `matched`, as in SGLang). The newest token completes any new match, so a tail as long
        as the longest match suffices."""
        patterns = req.sampling_params.stop_regex
        if not patterns or self.tokenizer is None:
            return None
        tail = req.output_ids[-regex_tail_tokens(tuple(patterns)):]
        text = self.tokenizer.decode(tail, skip_special_tokens=False)
        return next((p for p in patterns if re.search(p, text)), None)


# A match longer than this many characters (an unbounded pattern such as `a.*b`) is looked for
# only within this many trailing characters' worth of tokens.
MAX_REGEX_MATCH_CHARS = 256


@functools.lru_cache(maxsize=1024)
def regex_tail_tokens(patterns: tuple[str, ...]) -> int:
    """Trailing tokens that spell the longest match of any of `patterns`, even at one byte
    (a quarter of a character) per token."""
    widest = max(min(re_parser.parse(p).getwidth()[1], MAX_REGEX_MATCH_CHARS) for p in patterns)
    return 4 * widest + 2


class ResultProcessor:
    """Applies a step's results to its requests: appends tokens (accepting speculative drafts),
    advances grammars, checks stops, hands finished requests to `finish` and shares the KV of
    running ones through the radix tree."""

    def __init__(self, kv: KVManager, grammar: GrammarCoordinator, stop_checker: StopChecker,
                 spec: Optional[SpecDecoder], finish: Callable[[Req], None]) -> None:
        self.kv, self.grammar, self.stop_checker, self.spec = kv, grammar, stop_checker, spec
        self.finish = finish

    def process(self, plan: StepPlan, step: StepInputs, book: StepBook,
                result: RunResult) -> list[TokenOutput]:
        # KV a step wrote is confirmed once its results are applied (recovery rolls back the rest)
        ends = {id(req): start + n for req, start, n in zip(plan.reqs, step.batch.prefix_lens_cpu,
                                                            plan.num_new)}
        failed = self._fail_rows(plan, step, book, result)
        _store_prompt_logprobs(book, result, failed)
        for req, rows_sum in zip(book.pool_owners, result.pooled):
            if id(req) not in failed:
                req.add_pooled(rows_sum)
        dropped = {id(r) for r in book.sample_reqs if is_stale(r, book)}
        sampled = {id(r) for r in book.sample_reqs}
        for req in plan.reqs:
            if id(req) not in sampled and id(req) not in failed:
                self.kv.confirm(req, ends[id(req)])  # a prompt chunk
        row = 0
        while row < len(book.sample_reqs):
            req = book.sample_reqs[row]
            rows = book.verify.get(id(req))
            num_rows = 1 + len(rows.tree) if rows is not None else 1
            if id(req) in dropped or id(req) in failed:
                row += num_rows
                continue
            if rows is not None:  # speculative: 1 + len(draft) rows
                book.num_generated += self._accept_draft(req, rows, result, row)
                self.kv.confirm(req, req.num_computed)
            else:
                self._append(req, result, row)
                book.num_generated += 1
                self.kv.confirm(req, ends[id(req)])
            row += num_rows
        _store_hidden_states(book, result, failed | dropped)
        for req in book.prefill_done:
            if id(req) not in failed:
                req.finish({"type": "length", "length": 0})
        if self.spec is not None:
            self.spec.observe_step(plan, step, book)
        return self._outputs(plan, book, dropped)

    def _fail_rows(self, plan: StepPlan, step: StepInputs, book: StepBook,
                   result: RunResult) -> set[int]:
        """Requests the runner could not compute (`RunResult.failed_reqs`): their KV of this step
        is forgotten and they finish with the runner's error; the rest of the step stands."""
        failed = set()
        for i, message in result.failed_reqs.items():
            req = plan.reqs[i]
            if is_stale(req, book):
                continue
            rows = book.verify.get(id(req))
            if rows is not None:
                self.kv.free(rows.slots)
                rows.kept = [0]  # nothing of the draft is the request's any more
            self.kv.roll_back(req, upto=step.batch.prefix_lens_cpu[i])
            req.finish(abort_reason(f"the runner failed on this request: {message}", 500))
            failed.add(id(req))
        return failed

    def _append(self, req: Req, result: RunResult, row: int) -> None:
        token = result.next_token_ids[row]
        req.append_output(token, result.logprobs[row] if result.logprobs else None,
                          result.top_logprobs[row] if result.top_logprobs else None)
        if req.grammar is not None:
            self.grammar.after_token(req, token, self.kv)
        if not req.is_finished:
            self.stop_checker.check(req, token)

    def _outputs(self, plan: StepPlan, book: StepBook, dropped: set[int]) -> list[TokenOutput]:
        sampled = {id(r) for r in book.sample_reqs}
        outputs = []
        for req in plan.reqs:
            if id(req) in dropped:
                continue
            if req.is_finished:
                self.finish(req)
            elif id(req) not in sampled:
                self.kv.cache_unfinished(req)  # a prompt chunk: share it as we go
                continue
            elif req.cache_protected_len < req.prompt_len and not self.kv.tree.disable:
                # The prompt's last chunk ran: share the prompt now, not only when the request
                # finishes, so that requests arriving meanwhile with the same prefix reuse it
                # (SGLang does the same). Not the output: a later jump-forward may re-spell its tail.
                self.kv.cache_unfinished(req, upto=req.prompt_len)
            outputs.append(make_output(req))
        return outputs

    def _accept_draft(self, req: Req, rows: VerifyRows, result: RunResult, first: int) -> int:
        """Emit the verified tokens (stopping where the request stops, or where its grammar
        forces text that jump-forward then appends), keep the KV of the root and of the accepted
        draft nodes that precede the last emitted token, free the rest. Emitted token i was
        chosen at verify row ([0] + accepted rows)[i], which also gives its logprobs."""
        emitted, accepted = verify(rows.tree, result.next_token_ids[first:first + 1 + len(rows.tree)])
        chosen_at = [first] + [first + j + 1 for j in accepted]
        count, jump = 0, False
        for token, r in zip(emitted, chosen_at):
            req.append_output(token, result.logprobs[r] if result.logprobs else None,
                              result.top_logprobs[r] if result.top_logprobs else None)
            count += 1
            if req.grammar is not None:
                if not self.grammar.advance(req, token):
                    break
                if self.grammar.wants_jump(req):
                    jump = True  # decoding alone would jump forward here: the rest is not emitted
                    break
            self.stop_checker.check(req, token)
            if req.is_finished:
                break
        rows.kept = [0] + [j + 1 for j in accepted[:count - 1]]
        self.kv.accept_draft(req, rows.slots, rows.kept)
        self.spec.record(req, count, len(rows.tree))
        if jump:  # in the order decoding alone takes: jump forward, then check the stop strings
            self.grammar.jump(req, self.kv)
            if not req.is_finished:
                self.stop_checker.check(req, token)
        return count


def is_stale(req: Req, book: StepBook) -> bool:
    """Overlap: a row built before the previous step was read back is void when that step
    finished the request or rewrote its tokens (jump-forward)."""
    return req.state is ReqState.FINISHED or (id(req) in book.versions
                                              and book.versions[id(req)] != req.version)


def _store_prompt_logprobs(book: StepBook, result: RunResult, failed: set[int]) -> None:
    for i, req in enumerate(book.lp_owners):
        if id(req) in failed:
            continue
        if not req.input_logprobs and req.input_logprob_from == 0:
            req.input_logprobs.append(None)  # the first token has no context to score it
            req.input_top_logprobs.append(None)
        req.input_logprobs.append(result.input_logprobs[i])
        req.input_top_logprobs.append(result.input_top_logprobs[i] if result.input_top_logprobs else None)


def _store_hidden_states(book: StepBook, result: RunResult, skip: set[int]) -> None:
    """Hand each request the hidden states of the positions it computed (a verified request:
    of its root and accepted nodes, `kept`, in sequence order)."""
    for span in book.hidden_spans:
        req = span.req
        if id(req) in skip:
            continue
        rows = result.hidden_states[span.offset:span.offset + span.count]
        verified = book.verify.get(id(req))
        if verified is not None:
            rows = rows[verified.kept]
        req.hidden.add(span.start, rows)


def make_output(req: Req) -> TokenOutput:
    start = min(req.num_emitted, req.first_changed)
    lps = req.output_logprobs[start:] if req.return_logprob else []
    tops = req.output_top_logprobs[start:] if req.return_logprob and req.top_logprobs_num else []
    out = TokenOutput(
        rid=req.rid, new_token_ids=req.output_ids[start:], finished_reason=req.finished_reason,
        prompt_tokens=req.prompt_len, cached_tokens=req.cached_tokens,
        completion_tokens=len(req.output_ids), output_logprobs=lps, output_top_logprobs=tops,
        num_rewritten=req.num_emitted - start, meta=dict(req.meta),
        embedding=req.embedding() if (req.finished_reason or {}).get("type") == "length" else None,
        hidden_states=req.hidden.take() if req.hidden is not None else None)
    req.num_emitted, req.first_changed = len(req.output_ids), 1 << 62
    if req.input_logprob_from >= 0 and not req.input_logprobs_sent:
        if req.input_logprob_from == 0 and not req.input_logprobs:  # one-token prompt
            req.input_logprobs, req.input_top_logprobs = [None], [None]
        out.input_token_ids = req.origin_input_ids[req.input_logprob_from:]
        out.input_logprobs, out.input_top_logprobs = req.input_logprobs, req.input_top_logprobs
        req.input_logprobs_sent = True
    return out
