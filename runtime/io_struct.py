"""Messages that cross the front-end / scheduler boundary (in-process queue or ZMQ).
Plain dataclasses of Python values so they pickle cheaply."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from sgl.runtime.disaggregation.messages import Bootstrap
from sgl.runtime.sampling.params import SamplingParams


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
    priority: Optional[int] = None  # SGLang's request priority; stored, not yet scheduled by
    is_embedding: bool = False  # pool the prompt's hidden states (max_new_tokens 0) instead of generating
    bootstrap: Optional[Bootstrap] = None  # prefill-decode disaggregation: where the KV comes from


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
