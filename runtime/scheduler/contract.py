"""Everything that crosses between the scheduler (plans on the CPU) and the runner (runs models on
the device), in one place. The scheduler sends `StepInputs` (and, when a model drafts for
speculative decoding, `DraftInputs`); the runner answers with a `RunResult` (and `DraftTree`s).
Nothing else crosses: the runner never sees a request object, and the scheduler never touches a
device tensor. `tests/runtime/fake_runner.py` implements the same `Runner` protocol."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Protocol

import torch

from sgl.runtime.cache.memory_pool import TableWrites
from sgl.runtime.executor.forward_batch import ForwardBatch
from sgl.runtime.executor.pooling import PoolingConfig
from sgl.runtime.sampling.params import SamplingParams
from sgl.runtime.speculative.tree import DraftTree


@dataclass(frozen=True)
class RunnerInfo:
    """What the scheduler knows of the runner, fixed once the runner is up."""
    vocab_size: int
    context_len: int
    max_total_tokens: int        # KV pool slots (slot 0, the padding slot, not counted)
    max_running_requests: int
    max_req_rows: int            # rows of the request -> token table, the runner's dummy row included
    table_width: int             # its columns
    chunked_prefill_size: int
    can_overlap: bool = False    # launches return before the device is done, and a later step may
                                 # name this step's sampled ids (`ForwardBatch.future_src`)
    can_retry_steps: bool = True  # a step that raised may be run again in parts (not under tensor
                                  # parallelism: the other ranks may be inside its collectives)
    pooling: Optional[PoolingConfig] = None  # an embedding model (--is-embedding): how it pools
    kv_layout: tuple = ()        # (layers, kv heads, head dim, dtype) of the pool: KV moves between
                                 # servers only when both sides' layouts are equal
    kv_backend: str = "gloo"     # torch.distributed backend of KV transfers (disaggregation)


@dataclass
class SamplingInputs:
    """Per sampled logit row: what the sampler needs of the request (plain data, built by the
    scheduler). `output_ids` is the request's output as the row sees it (a draft path appended
    for speculative verify rows); `steps` its length counting tokens still in flight."""
    params: list[SamplingParams] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    prompt_ids: list[list[int]] = field(default_factory=list)
    output_ids: list[list[int]] = field(default_factory=list)
    min_tokens_ids: list[set[int]] = field(default_factory=list)  # masked until min_new_tokens


@dataclass
class StepInputs:
    """Scheduler -> runner, once per step."""
    batch: ForwardBatch
    sample_rows: list[int] = field(default_factory=list)  # logit rows that sample a token
    sampling: SamplingInputs = field(default_factory=SamplingInputs)
    lp_rows: list[int] = field(default_factory=list)      # logit rows scoring a prompt token
    lp_targets: list[int] = field(default_factory=list)   # ... the token each row scores
    top_logprobs_num: int = 0
    need_logprobs: bool = False
    table_writes: Optional[TableWrites] = None  # request -> token entries to set before the forward
    vocab_mask: Optional[torch.Tensor] = None   # packed (num_samples, ceil(vocab/32)) int32 grammar bitmask
    capture_hidden: bool = False  # keep the forward's hidden states for the runner's drafter (EAGLE)
    pool_spans: list[tuple[int, int]] = field(default_factory=list)  # token rows [lo, hi) whose final
                                                                      # hidden states are summed (embeddings)
    hidden_rows: list[int] = field(default_factory=list)  # token rows whose final hidden states come
                                                          # back (return_hidden_states); empty: none


@dataclass
class RunResult:
    """Runner -> scheduler: sampled tokens and, when asked, logprobs. A request of the batch
    whose rows the runner could not compute correctly is named in `failed_reqs` (its index in
    the ForwardBatch -> why); its tokens and logprobs in this result are meaningless, and the
    scheduler fails that request alone."""
    next_token_ids: list[int]
    logprobs: list[float] = field(default_factory=list)                       # per sample row
    top_logprobs: list[list[tuple[float, int]]] = field(default_factory=list)
    input_logprobs: list[float] = field(default_factory=list)                 # per prompt-logprob row
    input_top_logprobs: list[list[tuple[float, int]]] = field(default_factory=list)
    used_cuda_graph: bool = False  # for the step log
    pooled: list[torch.Tensor] = field(default_factory=list)  # per pool span: (hidden,) float32 CPU sum
    hidden_states: Optional[torch.Tensor] = None  # (len(hidden_rows), hidden) float32 CPU, final-normed
    failed_reqs: dict[int, str] = field(default_factory=dict)


class StepOutOfMemory(RuntimeError):
    """Raised by a runner whose step ran out of device memory, after it has released what it
    could (its allocator's cached blocks). Nothing of the step is kept: the scheduler may run
    the same work again in smaller steps."""


@dataclass
class DraftRequest:
    """One request a model drafter proposes a tree for. The drafter keeps its own state per rid
    (what its KV covers), reset when `admission` changes (a retracted request came back)."""
    rid: str
    admission: int
    row: int                   # the request's row in the request -> token table
    token_ids: list[int]       # prompt + output so far (read only)
    num_computed: int          # the target holds K/V of positions [0, num_computed)
    kv_slots: torch.Tensor     # their KV slots (CPU int64); the draft's K/V goes to the same slots
    scratch: torch.Tensor      # free slots the drafter may fill this call (CPU int64)
    max_nodes: int             # the largest tree wanted


@dataclass
class Observation:
    """What the previous step computed for a request (EAGLE drafters read the target's hidden
    states): positions [start, start + len(rows)) of its sequence, at these rows of the hidden
    states that step captured (the accepted rows, for a verified request)."""
    rid: str
    admission: int
    start: int
    rows: list[int]


@dataclass
class DraftInputs:
    requests: list[DraftRequest] = field(default_factory=list)
    table_writes: Optional[TableWrites] = None   # to apply first (the prefixes the drafter reads)
    observed: list[Observation] = field(default_factory=list)
    released: list[str] = field(default_factory=list)  # rids the drafter may forget


@dataclass(frozen=True)
class KVLinkSpec:
    """Prefill-decode disaggregation: a point-to-point link between a prefill server's runner
    (rank 0) and a decode server's (rank 1), a torch.distributed process group of two built on
    the prefill's bootstrap store under the prefix `sgl/link<link_id>`."""
    link_id: int
    store_host: str
    store_port: int
    rank: int
    backend: str               # "gloo" | "nccl"
    timeout_s: float           # longest wait of one transfer
    pair_timeout_s: float = 60.0  # longest wait for the peer to build the group


@dataclass
class KVJob:
    """Send (prefill) or receive (decode) the KV of `num_tokens` tokens over a link. Jobs of a
    link run one at a time in the order given, on both sides alike. `slots`: the tokens' KV
    slots (CPU int64); None receives and drops (a request this side no longer has)."""
    link_id: int
    job_id: str
    is_send: bool
    num_tokens: int
    slots: Optional[torch.Tensor] = None


@dataclass
class KVJobResult:
    """A finished KVJob; `error` set when it failed, which also closes its link (later jobs on
    it fail at once, and a new link is opened for new requests)."""
    link_id: int
    job_id: str
    error: Optional[str] = None


class PendingStep(Protocol):
    """A launched step; `resolve()` waits for it and reads its results back."""

    def resolve(self) -> RunResult: ...


class Runner(Protocol):
    """The executor as the scheduler sees it. A launch or a `resolve()` may raise (out of
    memory: `StepOutOfMemory`); the scheduler then forgets what the step wrote and runs the
    work again in smaller steps (scheduler/recovery.py)."""
    info: RunnerInfo

    def launch_batch(self, step: StepInputs) -> PendingStep:
        """Queue the forward and the sampling; return without waiting for the device."""

    def launch_forward(self, step: StepInputs) -> object:
        """Queue the forward alone (the scheduler fills the step's grammar masks while it
        runs); the returned handle goes to `launch_sampling`."""

    def launch_sampling(self, step: StepInputs, forward: object) -> PendingStep:
        """Queue the sampling of a forward queued by `launch_forward` (step.vocab_mask final)."""

    def draft(self, inputs: DraftInputs) -> list[DraftTree]:
        """A draft tree per request (speculative decoding with a draft model or head); called
        with no requests to hand over observations and releases alone."""

    def set_speculative(self, server_args: object) -> None:
        """Load (or drop) the drafter and the verify graphs of these speculative settings."""

    def open_kv_link(self, spec: KVLinkSpec) -> None:
        """Start pairing with a peer server's runner (in the background; jobs may follow)."""

    def submit_kv(self, job: KVJob) -> None:
        """Queue a KV transfer on its link; the result comes back through `poll_kv`."""

    def poll_kv(self) -> list[KVJobResult]:
        """The KV jobs finished since the last call (never blocks)."""

    def close_kv_link(self, link_id: int) -> None:
        """Drop a link; its queued jobs fail."""
