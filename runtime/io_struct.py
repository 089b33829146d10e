"""Messages that cross the front-end / scheduler boundary (in-process queue or ZMQ).
Plain dataclasses of Python values so they pickle cheaply."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional, Union

from sgl.runtime.disaggregation.messages import Bootstrap
from sgl.runtime.sampling.params import SamplingParams

if TYPE_CHECKING:  # the front end's processes need not load torch for these messages
    import torch


def abort_reason(message: str, status_code: int) -> dict[str, Any]:
    """The finish reason of a request the runtime gave up on: 400 for bad input, 500 for a
    failure of the runtime. Such a request is an error to its caller, never a result (an abort
    the client asked for carries no status code and ends as a result, as in SGLang)."""
    return {"type": "abort", "message": message, "status_code": status_code}


def failure_of(finish_reason: Optional[dict[str, Any]]) -> Optional["RequestFailed"]:
    """The error a finished request's caller gets, or None when it finished normally (or was
    aborted at the client's request)."""
    if not finish_reason or finish_reason.get("type") != "abort" or "status_code" not in finish_reason:
        return None
    status = int(finish_reason["status_code"])
    return (BadRequest if status == 400 else RequestFailed)(
        str(finish_reason.get("message", "request failed")), status)


class RequestFailed(RuntimeError):
    """A request the runtime could not complete; `status_code` is the HTTP status the server
    answers with (a 400 is a `BadRequest`, also a ValueError, as SGLang raises it)."""

    def __init__(self, message: str, status_code: int = 500) -> None:
        super().__init__(message)
        self.message, self.status_code = message, status_code


class BadRequest(RequestFailed, ValueError):
    """A request the runtime refused for its input (HTTP 400)."""


@dataclass
class TokenizedGenerateReq:
    """Front end -> scheduler: one sequence to generate (n>1 is expanded before this)."""
    rid: str
    input_ids: list[int]
    sampling_params: SamplingParams
    return_logprob: bool = False
    logprob_start_len: int = -1  # -1: no input logprobs
    top_logprobs_num: int = 0
    stream: bool = False
    priority: Optional[int] = None  # SGLang's request priority (scheduled with --enable-priority-scheduling)
    is_embedding: bool = False  # pool the prompt's hidden states (max_new_tokens 0) instead of generating
    dimensions: Optional[int] = None  # embeddings: keep the first `dimensions` values (Matryoshka)
    bootstrap: Optional[Bootstrap] = None  # prefill-decode disaggregation: where the KV comes from
    return_hidden_states: Union[bool, str] = False  # True: every position's final hidden state; "last"


@dataclass
class AbortReq:
    rid: str


@dataclass
class FlushCacheReq:
    pass


@dataclass
class TokenOutput:
    """Scheduler -> front end: what one request produced in one step.

    Logprob lists hold one entry per new token; `input_*` fields are sent once, with the first
    output of a request that asked for them."""
    rid: str
    new_token_ids: list[int]
    finished_reason: Optional[dict[str, Any]] = None
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    output_logprobs: list[float] = field(default_factory=list)
    output_top_logprobs: list[list[tuple[float, int]]] = field(default_factory=list)
    input_token_ids: Optional[list[int]] = None
    input_logprobs: Optional[list[Optional[float]]] = None
    input_top_logprobs: Optional[list[Optional[list[tuple[float, int]]]]] = None
    meta: dict[str, Any] = field(default_factory=dict)
    num_rewritten: int = 0  # drop this many already-sent output tokens before appending (jump-forward)
    text_delta: Optional[str] = None  # set by the server's detokenizer process: new decoded text
    embedding: Optional[list[float]] = None  # an embedding request's vector, with its final output
    # return_hidden_states: (n, hidden) float32 CPU, the final hidden states of the positions
    # computed since the last output, in order (True), or the newest position's alone ("last").
    hidden_states: Optional[torch.Tensor] = None
