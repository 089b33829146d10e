"""The end of a step on the device: sampling and prompt logprobs over the step's logit rows,
chunk by chunk (logit_rows.py), and the copy of the results to pinned host memory."""
from __future__ import annotations

import bisect
from typing import Any, Optional

import torch

from sgl.runtime.executor.logit_rows import LogitRows
from sgl.runtime.grammar import bitmask_to_bool
from sgl.runtime.sampling.sampler import SampleOutput, Sampler, SamplingBatchInfo
from sgl.runtime.scheduler.contract import RunResult, StepInputs

PromptLogprobs = tuple[torch.Tensor, Optional[tuple[torch.Tensor, torch.Tensor]]]


def step_outputs(rows: LogitRows, step: StepInputs, sampler: Sampler, vocab_size: int,
                 device: torch.device) -> tuple[Optional[SampleOutput], Optional[PromptLogprobs]]:
    """Sample step.sample_rows and score step.lp_rows (both ascending logit rows), one chunk of
    logits at a time: memory stays bounded by the chunk, whatever the number of rows."""
    sampled: list[SampleOutput] = []
    scored: list[PromptLogprobs] = []
    si = li = 0  # cursors into sample_rows and lp_rows
    for lo, hi, logits in rows.chunks():
        sj = bisect.bisect_left(step.sample_rows, hi, lo=si)
        lj = bisect.bisect_left(step.lp_rows, hi, lo=li)
        if sj > si:
            sampled.append(_sample(logits, lo, step, si, sj, sampler, vocab_size, device))
        if lj > li:
            scored.append(_prompt_logprobs(logits, lo, step, li, lj))
        si, li = sj, lj
    return _join_samples(sampled), _join_prompt_logprobs(scored)


def _sample(logits: torch.Tensor, lo: int, step: StepInputs, si: int, sj: int, sampler: Sampler,
            vocab_size: int, device: torch.device) -> SampleOutput:
    s = step.sampling
    info = SamplingBatchInfo.from_requests(s.params[si:sj], s.seeds[si:sj], s.steps[si:sj],
                                           s.prompt_ids[si:sj], s.output_ids[si:sj],
                                           s.min_tokens_ids[si:sj], vocab_size, device)
    rows = logits[_on([r - lo for r in step.sample_rows[si:sj]], logits.device)]
    mask = None
    if step.vocab_mask is not None:  # packed grammar bitmask -> (rows, vocab) bool, on the device
        mask = bitmask_to_bool(step.vocab_mask[si:sj].to(device, non_blocking=True), vocab_size)
    return sampler.forward(rows, info, vocab_mask=mask, top_logprobs_num=step.top_logprobs_num)


def _prompt_logprobs(logits: torch.Tensor, lo: int, step: StepInputs, li: int, lj: int) -> PromptLogprobs:
    rows = _on([r - lo for r in step.lp_rows[li:lj]], logits.device)
    targets = _on(step.lp_targets[li:lj], logits.device)
    logprobs = torch.log_softmax(logits[rows].float(), dim=-1)  # (rows, vocab)
    chosen = logprobs.gather(1, targets[:, None]).squeeze(1)
    k = min(step.top_logprobs_num, logprobs.shape[-1])  # never more than the vocabulary
    if not k:
        return chosen, None
    top = logprobs.topk(k, dim=-1)
    return chosen, (top.values, top.indices)


def _join_samples(parts: list[SampleOutput]) -> Optional[SampleOutput]:
    if len(parts) <= 1:
        return parts[0] if parts else None
    return SampleOutput(*(torch.cat([getattr(p, f) for p in parts]) for f in
                          ("next_token_ids", "logprobs", "top_logprobs_vals", "top_logprobs_ids")))


def _join_prompt_logprobs(parts: list[PromptLogprobs]) -> Optional[PromptLogprobs]:
    if len(parts) <= 1:
        return parts[0] if parts else None
    chosen = torch.cat([c for c, _ in parts])
    if parts[0][1] is None:
        return chosen, None
    return chosen, (torch.cat([t[0] for _, t in parts]), torch.cat([t[1] for _, t in parts]))


class PendingResult:
    """A launched step: its results are being copied to pinned host memory behind the step's
    kernels; `resolve()` waits for that copy alone (an event), not for work queued after it."""

    def __init__(self, step: StepInputs, used_cuda_graph: bool) -> None:
        self.step, self.used_cuda_graph = step, used_cuda_graph
        self.sampled: Optional[SampleOutput] = None
        self.prompt_lp: Optional[PromptLogprobs] = None
        self.pooled: Optional[torch.Tensor] = None  # (num_pool_spans, hidden) float32 sums
        self.hidden: Optional[torch.Tensor] = None  # (len(step.hidden_rows), hidden) float32
        self._host: dict[str, torch.Tensor] = {}
        self._event: Any = None

    def copy_to_host(self) -> None:
        out, step = self.sampled, self.step
        tensors = {}
        if out is not None:
            tensors["ids"] = out.next_token_ids
            if step.need_logprobs:
                tensors["lp"] = out.logprobs
                if step.top_logprobs_num:
                    tensors["top_vals"], tensors["top_ids"] = out.top_logprobs_vals, out.top_logprobs_ids
        if self.prompt_lp is not None:
            tensors["in_lp"] = self.prompt_lp[0]
            if self.prompt_lp[1] is not None:
                tensors["in_top_vals"], tensors["in_top_ids"] = self.prompt_lp[1]
        if self.pooled is not None:
            tensors["pooled"] = self.pooled
        if self.hidden is not None:
            tensors["hidden"] = self.hidden
        for name, t in tensors.items():
            if t.device.type == "cuda":
                host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
                host.copy_(t, non_blocking=True)
                t = host
            self._host[name] = t
        if any(t.device.type == "cuda" for t in tensors.values()):
            self._event = torch.cuda.Event()
            self._event.record()

    def resolve(self) -> RunResult:
        if self._event is not None:
            self._event.synchronize()
        h = self._host
        result = RunResult(next_token_ids=h["ids"].tolist() if "ids" in h else [],
                           used_cuda_graph=self.used_cuda_graph)
        if "lp" in h:
            result.logprobs = h["lp"].tolist()
        if "top_vals" in h:
            result.top_logprobs = _pairs(h["top_vals"], h["top_ids"])
        if "in_lp" in h:
            result.input_logprobs = h["in_lp"].tolist()
        if "in_top_vals" in h:
            result.input_top_logprobs = _pairs(h["in_top_vals"], h["in_top_ids"])
        if "pooled" in h:
            result.pooled = list(h["pooled"].unbind(0))
        result.hidden_states = h.get("hidden")
        return result


def _on(values: list[int], device: torch.device) -> torch.Tensor:
    """Indices to the device without waiting for the GPU (torch.tensor(..., device=) would)."""
    return torch.tensor(values, dtype=torch.int64).to(device, non_blocking=True)


def _pairs(vals: torch.Tensor, ids: torch.Tensor) -> list[list[tuple[float, int]]]:
    return [list(zip(v, i)) for v, i in zip(vals.tolist(), ids.tolist())]
