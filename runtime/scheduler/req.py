"""A request as the scheduler sees it: tokens, how many of them have KV, and where that KV is."""
from __future__ import annotations

import enum
from typing import Any, Optional

import torch

from sgl.runtime.executor.pooling import PoolingConfig
from sgl.runtime.scheduler.hidden_states import HiddenStates
from sgl.runtime.sampling.params import SamplingParams


class ReqState(enum.Enum):
    WAITING = "waiting"      # in the queue: holds no KV and no table row
    RUNNING = "running"      # admitted: holds a table row and the KV of its first num_computed tokens
    FINISHED = "finished"


class Req:
    def __init__(self, rid: str, input_ids: list[int], params: SamplingParams, seed: int,
                 stop_ids: set[int], return_logprob: bool = False, logprob_start_len: int = -1,
                 top_logprobs_num: int = 0, stream: bool = False, arrival: int = 0) -> None:
        self.rid, self.origin_input_ids, self.sampling_params = rid, list(input_ids), params
        self.seed, self.stop_ids, self.stream, self.arrival = seed, stop_ids, stream, arrival
        self.return_logprob, self.logprob_start_len = return_logprob, logprob_start_len
        self.top_logprobs_num = top_logprobs_num
        self.output_ids: list[int] = []
        self.all_ids: list[int] = list(input_ids)  # prompt + output, kept in step with output_ids
        self.state = ReqState.WAITING
        self.finished_reason: Optional[dict[str, Any]] = None
        # KV bookkeeping (CPU): the slots of tokens [0, num_computed) of all_ids.
        self.req_pool_idx: Optional[int] = None
        self._kv_chunks: list[torch.Tensor] = []  # appended per step, joined only when read
        self._kv_len = 0
        self.last_node: Any = None        # locked radix node covering kv_indices[:cache_protected_len]
        self.cache_protected_len = 0      # leading slots owned by the radix tree
        self.confirmed_len = 0            # leading slots whose KV a step that was read back wrote
        self.cached_tokens = 0            # prompt tokens served from the cache at first admission
        self.num_admissions = 0
        # Logprobs waiting to be sent with the next output.
        self.input_logprobs: list[Optional[float]] = []
        self.input_top_logprobs: list[Optional[list[tuple[float, int]]]] = []
        self.input_logprobs_sent = False
        # Output logprobs aligned with output_ids (None for tokens appended by jump-forward).
        self.output_logprobs: list[Optional[float]] = []
        self.output_top_logprobs: list[Optional[list[tuple[float, int]]]] = []
        self.num_emitted = 0            # output tokens already sent to the front end
        self.first_changed = 1 << 62    # lowest output index rewritten since the last send
        self.meta: dict[str, Any] = {}
        self.grammar: Any = None
        self.grammar_handle: Any = None
        self.min_tokens_ids: set[int] = set()
        self.draft: Any = None          # speculative decoding: this step's DraftTree, if any
        self.version = 0                # bumped when output tokens are rewritten (jump-forward)
        # Embedding requests (max_new_tokens 0): the pooled rows' hidden states, summed over chunks.
        self.pooling: Optional[PoolingConfig] = None
        self.pooled_sum: Optional[torch.Tensor] = None
        self.hidden: Optional[HiddenStates] = None  # return_hidden_states (scheduler/hidden_states.py)
        self.priority = 0  # the admission order under --enable-priority-scheduling (scheduler/priority.py)

    @property
    def seq_len(self) -> int:
        return len(self.all_ids)

    @property
    def kv_indices(self) -> torch.Tensor:
        """KV slots of tokens [0, num_computed) (CPU int64)."""
        if len(self._kv_chunks) != 1:
            joined = torch.cat(self._kv_chunks) if self._kv_chunks else torch.empty(0, dtype=torch.int64)
            self._kv_chunks = [joined]
        return self._kv_chunks[0]

    @kv_indices.setter
    def kv_indices(self, value: torch.Tensor) -> None:
        self._kv_chunks, self._kv_len = [value], int(value.numel())

    def extend_kv(self, slots: torch.Tensor) -> None:
        self._kv_chunks.append(slots)
        self._kv_len += int(slots.numel())

    @property
    def num_computed(self) -> int:
        return self._kv_len

    @property
    def prompt_len(self) -> int:
        return len(self.origin_input_ids)

    @property
    def is_prefill_only(self) -> bool:
        return self.sampling_params.max_new_tokens == 0

    @property
    def input_logprob_from(self) -> int:
        """First prompt position whose logprob is reported (-1: none asked)."""
        if not self.return_logprob or self.logprob_start_len < 0:
            return -1
        return min(self.logprob_start_len, self.prompt_len - 1)

    def max_prefix_len(self) -> int:
        """How much of all_ids the cache may supply: at least one token must run to get logits,
        and prompt positions whose logprobs or hidden states were asked must be recomputed."""
        cap = self.seq_len - 1
        if self.pooling is not None:
            cap = self.pooling.max_prefix_len(self.seq_len)
        start = self.input_logprob_from
        if start >= 0 and not self.input_logprobs_sent:
            cap = min(cap, max(start - 1, 0))
        if self.hidden is not None and not self.hidden.last_only:
            cap = min(cap, self.hidden.num_known)  # every position's hidden state is computed
        return max(cap, 0)

    def append_output(self, token: int, logprob: Optional[float] = None,
                      top: Optional[list[tuple[float, int]]] = None) -> None:
        self.output_ids.append(token)
        self.all_ids.append(token)
        self.output_logprobs.append(logprob)
        self.output_top_logprobs.append(top)

    def replace_output(self, new_ids: list[int], keep: int) -> None:
        """Rewrite the output from index `keep` on (jump-forward retokenization)."""
        self.output_ids = list(new_ids)
        self.all_ids = self.origin_input_ids + self.output_ids
        self.output_logprobs = self.output_logprobs[:keep] + [None] * (len(new_ids) - keep)
        self.output_top_logprobs = self.output_top_logprobs[:keep] + [None] * (len(new_ids) - keep)
        self.first_changed = min(self.first_changed, keep)
        self.version += 1

    def add_pooled(self, rows_sum: torch.Tensor) -> None:
        self.pooled_sum = rows_sum if self.pooled_sum is None else self.pooled_sum + rows_sum

    def embedding(self) -> Optional[list[float]]:
        if self.pooling is None or self.pooled_sum is None:
            return None
        return self.pooling.finish(self.pooled_sum, self.prompt_len)

    def remaining_new_tokens(self) -> int:
        return max(self.sampling_params.max_new_tokens - len(self.output_ids), 0)

    def finish(self, reason: dict[str, Any]) -> None:
        self.finished_reason = reason

    @property
    def is_finished(self) -> bool:
        return self.finished_reason is not None

    def __repr__(self) -> str:
        return f"Req({self.rid}, prompt={self.prompt_len}, out={len(self.output_ids)}, computed={self.num_computed})"
