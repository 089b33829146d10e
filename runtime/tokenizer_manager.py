"""The front end of the runtime (shared by Engine and the HTTP server): validates and tokenizes
requests, sends them to the scheduler, turns the scheduler's token outputs back into text and
SGLang-shaped result dicts. Runs on one asyncio loop; outputs arrive from another thread."""
from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any, AsyncIterator, Callable, Optional

from sgl.runtime.detokenizer import IncrementalDetokenizer, visible_text
from sgl.runtime.io_struct import AbortReq, TokenizedGenerateReq, TokenOutput, failure_of
from sgl.runtime.matryoshka import Matryoshka
from sgl.runtime.request import ParsedRequest, parse_encode, parse_generate
from sgl.runtime.request_options import RequestPolicy


class RequestTimedOut(TimeoutError):
    """A request ran past --request-timeout; it has been aborted."""


class ReqStream:
    """Everything the front end keeps about one sequence while it runs."""

    def __init__(self, req: TokenizedGenerateReq, tokenizer: Any, text_in_logprobs: bool,
                 event: Optional[asyncio.Event] = None) -> None:
        self.req, self.tokenizer, self.text_in_logprobs = req, tokenizer, text_in_logprobs
        sp = req.sampling_params
        self.detok = IncrementalDetokenizer(tokenizer, sp.skip_special_tokens,
                                            sp.spaces_between_special_tokens) if tokenizer else None
        self.output_ids: list[int] = []
        self.finished_reason: Optional[dict[str, Any]] = None
        self.meta: dict[str, Any] = {"id": req.rid, "prompt_tokens": len(req.input_ids),
                                     "completion_tokens": 0, "cached_tokens": 0}
        self.out_lp: list = []
        self.out_top: list = []
        self.in_lp: Optional[list] = None
        self.in_top: Optional[list] = None
        self.embedding: Optional[list[float]] = None  # an embedding request's vector, once finished
        self.hidden_rows: list[list[float]] = []  # return_hidden_states: by position (True), or the newest
        self.remote_text: Optional[str] = None  # decoded by a detokenizer process, when there is one
        self.event = event or asyncio.Event()  # shared by the sequences of one request
        # The error the request ends with, raised to its caller instead of a result: set by
        # `TokenizerManager.fail` (a stalled scheduler, shutdown), or by a finish reason with a
        # status code (the runtime gave up on it: `failure_of`).
        self.error: Optional[Exception] = None

    def update(self, out: TokenOutput) -> None:
        if out.num_rewritten:
            self._rewind(out.num_rewritten)
        self.output_ids.extend(out.new_token_ids)
        sp = self.req.sampling_params
        self.meta.update(prompt_tokens=out.prompt_tokens, completion_tokens=out.completion_tokens,
                         cached_tokens=out.cached_tokens, **out.meta)
        if out.text_delta is not None:
            self.remote_text = (self.remote_text or "") + out.text_delta
        elif self.detok is not None:
            ids = out.new_token_ids
            matched = (out.finished_reason or {}).get("matched")
            if isinstance(matched, int) and ids and ids[-1] == matched and not sp.no_stop_trim:
                ids = ids[:-1]  # the stop token itself is not part of the text
            self.detok.add(ids)
            if out.finished_reason is not None:
                self.detok.finish()
        self.out_lp += [(lp, t) for lp, t in zip(out.output_logprobs, out.new_token_ids)]
        self.out_top += out.output_top_logprobs
        if out.input_logprobs is not None:
            self.in_lp = list(zip(out.input_logprobs, out.input_token_ids))
            self.in_top = out.input_top_logprobs
        self.finished_reason = out.finished_reason
        if self.error is None:
            self.error = failure_of(out.finished_reason)
        if out.embedding is not None:
            self.embedding = out.embedding
        if out.hidden_states is not None:
            rows = out.hidden_states.tolist()
            last = self.req.return_hidden_states == "last"
            self.hidden_rows = rows[-1:] if last else self.hidden_rows + rows
        self.event.set()

    def _rewind(self, n: int) -> None:
        """Jump-forward re-spelled the last n tokens (same text, new ids): drop them."""
        keep = len(self.output_ids) - n
        self.output_ids, self.out_lp, self.out_top = (
            self.output_ids[:keep], self.out_lp[:keep], self.out_top[:keep])
        if self.detok is not None:
            self.detok = IncrementalDetokenizer(self.tokenizer, self.detok.kw["skip_special_tokens"],
                                                "spaces_between_special_tokens" not in self.detok.kw)
            self.detok.add(self.output_ids)

    @property
    def finished(self) -> bool:
        return self.finished_reason is not None

    def text(self) -> str:
        if self.detok is None and self.remote_text is None:
            return ""
        sp = self.req.sampling_params
        matched = (self.finished_reason or {}).get("matched")
        if not isinstance(matched, str) or matched not in sp.stop:
            matched = None  # a token, or a stop_regex pattern: its match stays in the text
        raw = self.remote_text if self.remote_text is not None else self.detok.text
        return visible_text(raw, sp.stop, matched, self.finished, sp.no_stop_trim)

    def result(self) -> dict[str, Any]:
        meta = dict(self.meta, finish_reason=self.finished_reason)
        if self.req.is_embedding:
            return {"embedding": self.embedding, "meta_info": meta}
        if self.req.return_hidden_states:
            self._add_hidden_states(meta)
        if self.req.return_logprob:
            meta["output_token_logprobs"] = [self._triple(lp, t) for lp, t in self.out_lp]
            meta["output_top_logprobs"] = [self._tops(x) for x in self.out_top] or [None] * len(self.out_lp)
            meta["input_token_logprobs"] = [self._triple(lp, t) for lp, t in (self.in_lp or [])]
            meta["input_top_logprobs"] = [self._tops(x) for x in (self.in_top or [])]
        return {"text": self.text(), "output_ids": list(self.output_ids), "meta_info": meta}

    def _add_hidden_states(self, meta: dict[str, Any]) -> None:
        """SGLang's shape: [the prompt positions' rows, then one vector per output token fed
        back] (the last output token is never fed); "last": the newest position's vector."""
        if self.req.return_hidden_states == "last":
            if self.hidden_rows:
                meta["hidden_states"] = self.hidden_rows[0]
            return
        n = len(self.req.input_ids)
        rows = self.hidden_rows
        meta["hidden_states"] = ([rows[:n]] + rows[n:]) if rows else []

    def _triple(self, lp: Optional[float], tid: int) -> tuple:
        return (lp, tid, self._tok_text(tid))

    def _tops(self, pairs: Optional[list]) -> Optional[list]:
        return None if pairs is None else [(lp, t, self._tok_text(t)) for lp, t in pairs]

    def _tok_text(self, tid: int) -> Optional[str]:
        if not self.text_in_logprobs or self.tokenizer is None:
            return None
        return self.tokenizer.decode([tid])


class TokenizerManager:
    def __init__(self, tokenizer: Any, vocab_size: int, context_len: int,
                 send: Callable[[Any], None], grammar_backend: str = "xgrammar",
                 is_embedding: bool = False, disaggregation_mode: str = "null",
                 policy: RequestPolicy = RequestPolicy(),
                 matryoshka: Optional[Matryoshka] = None) -> None:
        self.tokenizer, self.vocab_size, self.context_len = tokenizer, vocab_size, context_len
        self.grammar_backend, self.is_embedding = grammar_backend, is_embedding
        self.matryoshka = matryoshka  # embeddings: which `dimensions` the model allows
        self.disaggregation_mode, self.policy = disaggregation_mode, policy
        self.send = send
        self.states: dict[str, ReqStream] = {}
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self._worker: Optional[ThreadPoolExecutor] = None
        self.request_timeout: Optional[float] = None  # seconds a request may run (server flag)

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False) if self.tokenizer else None

    def parse(self, obj: dict[str, Any]) -> ParsedRequest:
        if self.is_embedding:
            raise ValueError("this server runs an embedding model (--is-embedding): use /encode, "
                             "/v1/embeddings or Engine.encode, not generation")
        tok = self.tokenize if self.tokenizer is not None else None
        return parse_generate(obj, tok, self.vocab_size, self.context_len, self.grammar_backend,
                              self.disaggregation_mode, self.policy)

    def parse_encode(self, obj: dict[str, Any]) -> ParsedRequest:
        if not self.is_embedding:
            raise ValueError("embeddings need an embedding model: start the server (or Engine) "
                             "with --is-embedding / is_embedding=True")
        # The tokenizer's own special tokens (Qwen3-Embedding appends <|endoftext|>, whose hidden
        # state it pools), as sentence-transformers tokenizes.
        tok = self.tokenizer.encode if self.tokenizer is not None else None
        return parse_encode(obj, tok, self.vocab_size, self.context_len, self.matryoshka)

    async def parse_async(self, obj: dict[str, Any]) -> ParsedRequest:
        """`parse` off the event loop: a long prompt takes seconds to tokenize, and every other
        request (and /health) would wait for it."""
        return await self.off_loop(self.parse, obj)

    async def off_loop(self, fn: Callable[..., Any], *args: Any) -> Any:
        # One thread: a fast tokenizer must not be entered by two threads at once (it sets its
        # truncation state per call); the tokenizer releases the GIL while it encodes.
        if self._worker is None:
            self._worker = ThreadPoolExecutor(1, thread_name_prefix="sgl-tokenize")
        return await asyncio.get_running_loop().run_in_executor(self._worker, fn, *args)

    # -- scheduler outputs (any thread) -------------------------------------------------------
    def on_outputs(self, outputs: list[TokenOutput]) -> None:
        if self.loop is None:
            return
        self.loop.call_soon_threadsafe(self._dispatch, outputs)

    def _dispatch(self, outputs: list[TokenOutput]) -> None:
        for out in outputs:
            state = self.states.get(out.rid)
            if state is not None:
                state.update(out)

    # -- requests (on the loop) -----------------------------------------------------------------
    async def generate(self, obj: dict[str, Any], parsed: Optional[ParsedRequest] = None
                       ) -> AsyncIterator[list[dict[str, Any]]]:
        """Yields the list of result dicts (one per sequence) each time something changed
        (streaming), or once at the end. `parsed`: `obj` already parsed by the caller. Raises
        `RequestFailed` (`BadRequest` for a 400) as soon as a sequence fails; the request's
        other sequences are aborted."""
        self.loop = asyncio.get_running_loop()
        parsed = parsed or await self.parse_async(obj)
        self._check_rids(parsed)
        if len(parsed.reqs) > len(parsed.prompts) and parsed.reqs[0].bootstrap is None:  # n > 1
            await self._warm_prefixes(parsed)  # (disaggregated: the prefill server's cache serves)
        self._check_rids(parsed)  # again: another request may have taken one while we warmed
        event = asyncio.Event()  # one wake-up per step for the whole batch, however large
        states: list[ReqStream] = []
        deadline = None if self.request_timeout is None else self.loop.time() + self.request_timeout
        try:
            for r in parsed.reqs:
                states.append(self._submit(r, parsed.return_text_in_logprobs, event))
            while True:
                await self._wait(event, deadline)
                event.clear()
                failed = next((s.error for s in states if s.error is not None), None)
                if failed is not None:
                    raise failed
                done = all(s.finished for s in states)
                if parsed.stream or done:
                    yield [s.result() for s in states]
                if done:
                    return
        finally:
            for s in states:
                if not s.finished:
                    self.send(AbortReq(s.req.rid))
                self.states.pop(s.req.rid, None)

    async def _wait(self, event: asyncio.Event, deadline: Optional[float]) -> None:
        if deadline is None:
            await event.wait()
            return
        try:
            await asyncio.wait_for(event.wait(), max(deadline - self.loop.time(), 0.0))
        except asyncio.TimeoutError:  # the caller's finally aborts what is unfinished
            raise RequestTimedOut(f"the request ran past the server's --request-timeout "
                                  f"({self.request_timeout:g} s) and was aborted") from None

    def _check_rids(self, parsed: ParsedRequest) -> None:
        """Refuse a request whose rid is taken before any of its sequences is sent (a batch sent
        in part would leave its first sequences running for nobody)."""
        taken = [r.rid for r in parsed.reqs if r.rid in self.states]
        if taken:
            raise ValueError(f"rid {taken[0]!r} is already running; rids must be unique")

    async def _warm_prefixes(self, parsed: ParsedRequest) -> None:
        """n>1: prefill each prompt once so the n copies hit the cache."""
        from sgl.runtime.sampling.params import SamplingParams
        distinct = {tuple(p) for p in parsed.prompts}
        priority = parsed.reqs[0].priority  # scheduled as the request itself
        warm = [TokenizedGenerateReq(f"warm-{id(parsed)}-{i}", list(p), SamplingParams(max_new_tokens=0),
                                     priority=priority) for i, p in enumerate(distinct)]
        event = asyncio.Event()
        states = [self._submit(r, False, event) for r in warm]
        try:
            while not all(s.finished or s.error is not None for s in states):
                await event.wait()
                event.clear()
        finally:
            for s in states:
                if not s.finished:  # the client left while warming: nobody waits for these
                    self.send(AbortReq(s.req.rid))
                self.states.pop(s.req.rid, None)

    def _submit(self, req: TokenizedGenerateReq, text_in_logprobs: bool,
                event: Optional[asyncio.Event] = None) -> ReqStream:
        if req.rid in self.states:
            raise ValueError(f"rid {req.rid!r} is already running")
        state = ReqStream(req, self.tokenizer, text_in_logprobs, event)
        self.states[req.rid] = state
        self.send(req)
        return state

    def fail(self, rids: list[str], error: Exception) -> None:
        """End these requests with `error` (raised to their callers) without waiting for the
        scheduler, which may be gone or stuck; their abort is sent all the same."""
        for rid in rids:
            state = self.states.get(rid)
            if state is not None and not state.finished:
                state.error = error
                state.event.set()

    def abort(self, rid: str) -> None:
        self.send(AbortReq(rid))

