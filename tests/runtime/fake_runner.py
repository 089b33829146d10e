"""A stand-in for ModelRunner in scheduler tests. It keeps a fake KV pool holding the token id
of each slot and reads a request's whole history back through the request->token table, so any
scheduler mistake about slots, prefixes or table rows changes the output."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from sgl.runtime.cache.memory_pool import ReqToTokenPool
from sgl.runtime.disaggregation.transfer import KVTransferAgent
from sgl.runtime.scheduler.contract import (DraftInputs, KVJob, KVJobResult, KVLinkSpec, RunnerInfo,
                                            RunResult, StepInputs, StepOutOfMemory)
from sgl.runtime.speculative.tree import DraftTree

VOCAB = 97
GARBAGE = -2  # what a failed step leaves in the KV it wrote: any read of it changes the output


@dataclass
class Faults:
    """Failures the fake runner injects, all decided by what a step holds (so the same request
    fails however it is batched). Rows of a request whose new tokens include `poison_token`
    fail alone (`RunResult.failed_reqs`); a step holding `crash_token`, or more new tokens or
    requests than the `oom_*` limits, raises (StepOutOfMemory for the limits). `at_resolve`:
    raise when the step is read back instead of at launch. A failed step writes GARBAGE."""
    poison_token: Optional[int] = None
    crash_token: Optional[int] = None
    oom_above_tokens: Optional[int] = None
    oom_above_reqs: Optional[int] = None
    oom_token: Optional[int] = None  # a step holding it is out of memory, however small
    at_resolve: bool = False
    num_raised: int = 0

    def error(self, step: StepInputs) -> Optional[Exception]:
        b, ids = step.batch, set(step.batch.input_ids.tolist())
        if self.crash_token is not None and self.crash_token in ids:
            return RuntimeError("injected device error")
        if self.oom_token is not None and self.oom_token in ids:
            return StepOutOfMemory("injected: out of memory (oom_token)")
        if self.oom_above_tokens is not None and b.num_tokens > self.oom_above_tokens:
            return StepOutOfMemory(f"injected: {b.num_tokens} tokens > {self.oom_above_tokens}")
        if self.oom_above_reqs is not None and b.batch_size > self.oom_above_reqs:
            return StepOutOfMemory(f"injected: {b.batch_size} requests > {self.oom_above_reqs}")
        return None

    def poisoned(self, step: StepInputs) -> dict[int, str]:
        if self.poison_token is None:
            return {}
        b, out, start = step.batch, {}, 0
        for i, n in enumerate(b.extend_lens_cpu):
            if self.poison_token in b.input_ids[start:start + n].tolist():
                out[i] = "injected row fault"
            start += n
        return out


def next_token(history: list[int]) -> int:
    """The fake model: a deterministic function of the whole sequence so far."""
    h = 0
    for t in history:
        h = (h * 31 + t + 7) % 1_000_003
    return h % VOCAB


def fake_hidden(history: list[int]) -> list[float]:
    """The fake model's final hidden state at the last position of `history`."""
    return [float(len(history)), float(history[-1]), float(next_token(history))]


def fake_logprob(history: list[int], target: int) -> float:
    return -((next_token(history) * 13 + target) % 50) / 10.0


def reference_generate(prompt: list[int], max_new_tokens: int, stop_ids: set[int] = frozenset()) -> list[int]:
    seq, out = list(prompt), []
    for _ in range(max_new_tokens):
        t = next_token(seq)
        seq.append(t)
        out.append(t)
        if t in stop_ids:
            break
    return out


class FakeRunner:
    """Implements the scheduler's `Runner` protocol (runtime/scheduler/contract.py)."""

    def __init__(self, max_total_tokens: int = 512, max_running_requests: int = 64,
                 chunked_prefill_size: int = 64, context_len: int = 256,
                 faults: Optional[Faults] = None) -> None:
        self.faults = faults or Faults()
        self.info = RunnerInfo(vocab_size=VOCAB, context_len=context_len,
                               max_total_tokens=max_total_tokens,
                               max_running_requests=max_running_requests,
                               max_req_rows=max_running_requests + 1, table_width=context_len + 8,
                               chunked_prefill_size=chunked_prefill_size,
                               kv_layout=("fake", 1), kv_backend="gloo")
        self.req_to_token_pool = ReqToTokenPool(max_running_requests + 1, context_len + 8, "cpu")
        self.slot_tokens = torch.full((max_total_tokens + 1,), -1, dtype=torch.int64)
        self.num_steps = 0
        self.last_tokens: list[int] = []
        self.batch_sizes: list[int] = []
        # Disaggregation: the "KV" of a slot (its token id) moves over real gloo links.
        self.kv_transfer = KVTransferAgent(SlotTokensIO(self.slot_tokens))

    def history(self, row: int, length: int) -> list[int]:
        slots = self.req_to_token_pool.req_to_token[row, :length].to(torch.int64)
        hist = self.slot_tokens[slots].tolist()
        assert -1 not in hist, "read a slot nothing wrote"
        assert GARBAGE not in hist, "read KV that a failed step wrote"
        return hist

    def run_batch(self, step: StepInputs) -> RunResult:
        b = step.batch
        self.req_to_token_pool.apply(step.table_writes)
        self.num_steps += 1
        self.batch_sizes.append(b.batch_size)
        self.slot_tokens[b.out_cache_loc] = b.input_ids
        failed = self.faults.poisoned(step)
        self._spoil(step, failed)
        row_hist = self._row_histories(step, set(failed))
        nxt = [next_token(row_hist[r]) for r in step.sample_rows]
        result = RunResult(next_token_ids=nxt, failed_reqs=failed)
        if step.need_logprobs:
            result.logprobs = [fake_logprob(row_hist[r], t) for r, t in zip(step.sample_rows, nxt)]
        result.input_logprobs = [fake_logprob(row_hist[r], t) for r, t in zip(step.lp_rows, step.lp_targets)]
        if step.hidden_rows:
            hists = self._histories(step, step.hidden_rows, set(failed))
            result.hidden_states = torch.tensor([fake_hidden(h) if h else [0.0] * 3 for h in hists])
        return result

    def launch_batch(self, step: StepInputs) -> "Done":
        """Overlap scheduling's entry: ids named by future_src come from the last step's tokens
        (the real runner keeps them on the device)."""
        b = step.batch
        if b.future_src is not None:
            prev = torch.tensor(self.last_tokens, dtype=torch.int64)
            b.input_ids = torch.where(b.future_src >= 0, prev[b.future_src.clamp(min=0)], b.input_ids)
        error = self.faults.error(step)
        if error is not None:
            self.faults.num_raised += 1
            if not self.faults.at_resolve:
                raise error  # before anything ran: the step's table writes are lost too
            self.req_to_token_pool.apply(step.table_writes)
            self.slot_tokens[b.out_cache_loc] = GARBAGE
            self.last_tokens = [0] * len(step.sample_rows)
            return Done(None, error)
        result = self.run_batch(step)
        if step.sample_rows:
            self.last_tokens = result.next_token_ids
        return Done(result)

    def launch_forward(self, step: StepInputs) -> StepInputs:
        return step

    def launch_sampling(self, step: StepInputs, forward: object) -> "Done":
        return self.launch_batch(step)

    def draft(self, inputs: DraftInputs) -> list[DraftTree]:
        raise AssertionError("the fake runner has no draft model")

    def set_speculative(self, server_args: object) -> None:
        raise AssertionError("the fake runner has no draft model")

    def open_kv_link(self, spec: KVLinkSpec) -> None:
        self.kv_transfer.open(spec)

    def submit_kv(self, job: KVJob) -> None:
        self.kv_transfer.submit(job)

    def poll_kv(self) -> list[KVJobResult]:
        return self.kv_transfer.poll()

    def close_kv_link(self, link_id: int) -> None:
        self.kv_transfer.close(link_id)

    def _spoil(self, step: StepInputs, failed: dict[int, str]) -> None:
        """A failed request's KV of this step is garbage."""
        b, start = step.batch, 0
        for i, n in enumerate(b.extend_lens_cpu):
            if i in failed:
                self.slot_tokens[b.out_cache_loc[start:start + n]] = GARBAGE
            start += n

    def _row_histories(self, step: StepInputs, failed: set[int] = frozenset()) -> list[list[int]]:
        return self._histories(step, step.batch.logits_indices.tolist(), failed)

    def _histories(self, step: StepInputs, token_rows: list[int], failed: set[int]) -> list[list[int]]:
        """Each token row's sequence up to and including it, read back through the table."""
        b = step.batch
        owner = []
        for i, n in enumerate(b.extend_lens_cpu):
            owner += [i] * n
        out = []
        for token_idx in token_rows:
            i = owner[token_idx]
            pos = int(b.positions[token_idx])
            out.append([] if i in failed else self.history(int(b.req_pool_indices[i]), pos + 1))
        return out


class SlotTokensIO:
    """The fake pool as a transfer sees it: one token id per slot."""
    device = torch.device("cpu")

    def __init__(self, slot_tokens: torch.Tensor) -> None:
        self.slot_tokens = slot_tokens

    def empty(self, num_tokens: int, device: torch.device) -> torch.Tensor:
        return torch.empty(num_tokens, dtype=torch.int64)

    def gather(self, slots: torch.Tensor) -> torch.Tensor:
        return self.slot_tokens[slots]

    def scatter(self, slots: torch.Tensor, data: torch.Tensor) -> None:
        self.slot_tokens[slots] = data


class Done:
    def __init__(self, result: Optional[RunResult], error: Optional[Exception] = None) -> None:
        self.result, self.error = result, error

    def resolve(self) -> RunResult:
        if self.error is not None:
            raise self.error
        return self.result
