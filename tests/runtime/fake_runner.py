"""A stand-in for ModelRunner in scheduler tests. It keeps a fake KV pool holding the token id
of each slot and reads a request's whole history back through the request->token table, so any
scheduler mistake about slots, prefixes or table rows changes the output."""
from __future__ import annotations

import torch

from sgl.runtime.cache.memory_pool import ReqToTokenPool
from sgl.runtime.disaggregation.transfer import KVTransferAgent
from sgl.runtime.scheduler.contract import (DraftInputs, KVJob, KVJobResult, KVLinkSpec, RunnerInfo,
                                            RunResult, StepInputs)
from sgl.runtime.speculative.tree import DraftTree

VOCAB = 97


def next_token(history: list[int]) -> int:
    """The fake model: a deterministic function of the whole sequence so far."""
    h = 0
    for t in history:
        h = (h * 31 + t + 7) % 1_000_003
    return h % VOCAB


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
                 chunked_prefill_size: int = 64, context_len: int = 256) -> None:
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
        return hist

    def run_batch(self, step: StepInputs) -> RunResult:
        b = step.batch
        self.req_to_token_pool.apply(step.table_writes)
        self.num_steps += 1
        self.batch_sizes.append(b.batch_size)
        self.slot_tokens[b.out_cache_loc] = b.input_ids
        row_hist = self._row_histories(step)
        nxt = [next_token(row_hist[r]) for r in step.sample_rows]
        result = RunResult(next_token_ids=nxt)
        if step.need_logprobs:
            result.logprobs = [fake_logprob(row_hist[r], t) for r, t in zip(step.sample_rows, nxt)]
        result.input_logprobs = [fake_logprob(row_hist[r], t) for r, t in zip(step.lp_rows, step.lp_targets)]
        return result

    def launch_batch(self, step: StepInputs) -> "Done":
        """Overlap scheduling's entry: ids named by future_src come from the last step's tokens
        (the real runner keeps them on the device)."""
        b = step.batch
        if b.future_src is not None:
            prev = torch.tensor(self.last_tokens, dtype=torch.int64)
            b.input_ids = torch.where(b.future_src >= 0, prev[b.future_src.clamp(min=0)], b.input_ids)
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

    def _row_histories(self, step: StepInputs) -> list[list[int]]:
        b = step.batch
        owner, start = [], 0
        for i, n in enumerate(b.extend_lens_cpu):
            owner += [i] * n
            start += n
        out = []
        for token_idx in b.logits_indices.tolist():
            i = owner[token_idx]
            pos = int(b.positions[token_idx])
            out.append(self.history(int(b.req_pool_indices[i]), pos + 1))
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
    def __init__(self, result: RunResult) -> None:
        self.result = result

    def resolve(self) -> RunResult:
        return self.result
