"""Batched sampler: logit processors, greedy/random selection and raw-distribution logprobs.

The per-step state (`SamplingBatchInfo`) is built once on the host from plain lists; `Sampler`
then runs as tensor ops with no host sync, so the scheduler's `.tolist()` on the chosen tokens
is the only one. Random draws come from counter-based noise keyed by (seed, step, token id), so a
request samples the same tokens whether it runs alone or in any batch, at any position.
"""
from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from sgl.kernels.linear import batch_invariant
from sgl.kernels.sampling import gumbel_noise, min_p_mask, top_k_mask, top_p_mask
from sgl.runtime.sampling.params import SamplingParams
from sgl.runtime.sampling.penalties import PenaltyTensors, _to_device

_NEG_INF = float("-inf")


@dataclass
class SparseEntries:
    """A few (row, token) entries of a (bs, V) matrix, e.g. logit biases or masked stop ids."""
    rows: torch.Tensor    # (nnz,) int64
    cols: torch.Tensor    # (nnz,) int64
    values: torch.Tensor  # (nnz,) float32

    @classmethod
    def build(cls, entries: list[tuple[int, int, float]],
              device: torch.device) -> SparseEntries | None:
        if not entries:
            return None
        rows, cols, values = zip(*entries)
        return cls(rows=_to_device(torch.tensor(rows, dtype=torch.int64), device),
                   cols=_to_device(torch.tensor(cols, dtype=torch.int64), device),
                   values=_to_device(torch.tensor(values, dtype=torch.float32), device))


@dataclass
class SamplingBatchInfo:
    vocab_size: int
    temperatures: torch.Tensor  # (bs,) float32; 1.0 on greedy rows (they never divide)
    top_ks: torch.Tensor        # (bs,) int64 in [1, V]; V where off
    max_top_k: int              # host copy: largest top_k < V of a sampled row (1 if none)
    top_ps: torch.Tensor        # (bs,) float32 in (0, 1]
    min_ps: torch.Tensor        # (bs,) float32 in [0, 1]
    is_greedy: torch.Tensor     # (bs,) bool: temperature == 0 or top_k == 1
    seeds: torch.Tensor         # (bs,) int64: request seed (its low 64 bits, two's complement)
    steps: torch.Tensor         # (bs,) int64: tokens generated so far = random-stream position
    logit_bias: SparseEntries | None       # added to the logits
    min_tokens_mask: SparseEntries | None  # stop ids set to -inf before min_new_tokens
    penalties: PenaltyTensors | None
    # Host-side flags: skip work nobody in the batch asked for (branching on them costs no sync).
    is_all_greedy: bool
    has_greedy: bool
    need_top_k: bool
    need_top_p: bool
    need_min_p: bool

    @property
    def batch_size(self) -> int:
        return int(self.temperatures.shape[0])

    @property
    def need_penalties(self) -> bool:
        return self.penalties is not None

    @property
    def need_logit_bias(self) -> bool:
        return self.logit_bias is not None

    @property
    def need_min_tokens_mask(self) -> bool:
        return self.min_tokens_mask is not None

    @classmethod
    def from_requests(cls, params: Sequence[SamplingParams], seeds: Sequence[int],
                      steps: Sequence[int], prompt_ids: Sequence[Sequence[int]],
                      output_ids: Sequence[Sequence[int]], stop_ids: Sequence[set[int]],
                      vocab_size: int, device: torch.device | str = "cpu") -> SamplingBatchInfo:
        """Build the step's tensors from per-request lists (row i = request i)."""
        bs = len(params)
        assert all(len(x) == bs for x in (seeds, steps, prompt_ids, output_ids, stop_ids))
        device = torch.device(device)
        greedy = [p.is_greedy for p in params]
        sampled = [p for p, g in zip(params, greedy) if not g]
        top_ks = [vocab_size if g or p.top_k < 1 else min(p.top_k, vocab_size)
                  for p, g in zip(params, greedy)]
        tensor = lambda xs, dtype: _to_device(torch.tensor(xs, dtype=dtype), device)
        return cls(
            vocab_size=vocab_size,
            temperatures=tensor([1.0 if g else p.temperature for p, g in zip(params, greedy)],
                                torch.float32),
            top_ks=tensor(top_ks, torch.int64),
            max_top_k=max([k for k, g in zip(top_ks, greedy) if not g and k < vocab_size],
                          default=1),
            top_ps=tensor([1.0 if g else p.top_p for p, g in zip(params, greedy)], torch.float32),
            min_ps=tensor([0.0 if g else p.min_p for p, g in zip(params, greedy)], torch.float32),
            is_greedy=tensor(greedy, torch.bool),
            seeds=tensor([_to_int64(s) for s in seeds], torch.int64),
            steps=tensor(list(steps), torch.int64),
            logit_bias=SparseEntries.build(_bias_entries(params), device),
            min_tokens_mask=SparseEntries.build(
                _min_tokens_entries(params, steps, stop_ids), device),
            penalties=PenaltyTensors.build(params, prompt_ids, output_ids, vocab_size, device),
            is_all_greedy=all(greedy),
            has_greedy=any(greedy),
            need_top_k=any(k < vocab_size for k, g in zip(top_ks, greedy) if not g),
            need_top_p=any(p.top_p < 1.0 for p in sampled),
            need_min_p=any(p.min_p > 0.0 for p in sampled),
        )


@dataclass
class SampleOutput:
    next_token_ids: torch.Tensor     # (bs,) int64
    logprobs: torch.Tensor           # (bs,) float32: chosen token under log_softmax(raw logits)
    top_logprobs_vals: torch.Tensor  # (bs, k) float32, descending, raw distribution
    top_logprobs_ids: torch.Tensor   # (bs, k) int64


def process_logits(logits: torch.Tensor, info: SamplingBatchInfo,
                   vocab_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Grammar mask -> logit_bias -> min_new_tokens mask -> penalties; returns a new (bs, V) tensor.

    This is what greedy rows take the argmax of, and what temperature/truncation then act on.
    """
    x = logits.float().clone()
    if vocab_mask is not None:
        x.masked_fill_(~vocab_mask, _NEG_INF)
    if info.logit_bias is not None:
        b = info.logit_bias
        x.index_put_((b.rows, b.cols), b.values, accumulate=True)
    if info.min_tokens_mask is not None:
        m = info.min_tokens_mask
        x.index_put_((m.rows, m.cols), m.values)
    if info.penalties is not None:
        x = info.penalties.apply(x)
    return x


class Sampler:
    """Stateless; one instance per runner. See `forward`."""

    def forward(self, logits: torch.Tensor, info: SamplingBatchInfo,
                vocab_mask: torch.Tensor | None = None,
                top_logprobs_num: int = 0) -> SampleOutput:
        """Choose one token per row.

        logits: (bs, V) float. vocab_mask: (bs, V) bool, True = allowed (grammar), or None.
        top_logprobs_num: k of the returned top logprobs (0 = none; pass the batch's max).
        """
        assert logits.dim() == 2 and logits.shape[1] == info.vocab_size, (
            f"logits {tuple(logits.shape)} vs vocab_size {info.vocab_size}")
        logits = logits.float()
        x = process_logits(logits, info, vocab_mask)
        if info.is_all_greedy:
            next_ids = torch.argmax(x, dim=-1)  # ties: first (lowest) index
        else:
            next_ids = self._sample(x, info)
        return _raw_logprobs(logits, next_ids, top_logprobs_num)

    __call__ = forward

    @staticmethod
    def _sample(x: torch.Tensor, info: SamplingBatchInfo) -> torch.Tensor:
        greedy_ids = torch.argmax(x, dim=-1) if info.has_greedy else None
        x = x.div_(info.temperatures[:, None])
        if info.need_top_k:
            x.masked_fill_(~top_k_mask(x, info.top_ks, info.max_top_k), _NEG_INF)
        if info.need_top_p or info.need_min_p:
            # Top-p sees the distribution renormalized after top-k; min-p's threshold is
            # relative to the top token, which top-p always keeps, so both use the same probs.
            probs = torch.softmax(x, dim=-1)
            keep = top_p_mask(probs, info.top_ps) if info.need_top_p else None
            if info.need_min_p:
                min_keep = min_p_mask(probs, info.min_ps)
                keep = min_keep if keep is None else keep & min_keep
            x.masked_fill_(~keep, _NEG_INF)
        # Gumbel-max: argmax(x + G) ~ softmax(x) over the surviving tokens.
        x.add_(gumbel_noise(info.seeds, info.steps, info.vocab_size))
        sampled_ids = torch.argmax(x, dim=-1)
        if greedy_ids is None:
            return sampled_ids
        return torch.where(info.is_greedy, greedy_ids, sampled_ids)


def _raw_logprobs(logits: torch.Tensor, next_ids: torch.Tensor, k: int) -> SampleOutput:
    """Logprobs under the model's unprocessed distribution, as the API reports them."""
    if k > 0:
        top_ids = torch.topk(logits, min(k, logits.shape[1]), dim=-1).indices  # (bs, k)
    else:
        top_ids = torch.empty((logits.shape[0], 0), dtype=torch.int64, device=logits.device)
    vals = _logprobs_at(logits, torch.cat([next_ids[:, None], top_ids], dim=1))
    return SampleOutput(next_token_ids=next_ids, logprobs=vals[:, 0],
                        top_logprobs_vals=vals[:, 1:], top_logprobs_ids=top_ids)


def _logprobs_at(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """log_softmax(logits) (bs, vocab) at ids (bs, n) -> (bs, n)."""
    if batch_invariant():
        # --enable-deterministic-inference: torch's generic reductions (logsumexp) spread each
        # row of a small batch over several thread blocks, so a row's sum order depends on the
        # batch size (2 float32 ulps apart on the H100); log_softmax reduces every row in one
        # block whatever the batch.
        return torch.log_softmax(logits, dim=-1).gather(1, ids)
    return logits.gather(1, ids) - torch.logsumexp(logits, dim=-1, keepdim=True)


def _to_int64(seed: int) -> int:
    """Any Python int -> the int64 with the same low 64 bits."""
    seed &= (1 << 64) - 1
    return seed - (1 << 64) if seed >= 1 << 63 else seed


def _bias_entries(params: Sequence[SamplingParams]) -> list[tuple[int, int, float]]:
    return [(i, tok, bias) for i, p in enumerate(params) for tok, bias in p.logit_bias.items()]


def _min_tokens_entries(params: Sequence[SamplingParams], steps: Sequence[int],
                        stop_ids: Sequence[set[int]]) -> list[tuple[int, int, float]]:
    """Stop ids masked on rows whose request has generated fewer than min_new_tokens."""
    return list(itertools.chain.from_iterable(
        [(i, tok, _NEG_INF) for tok in sorted(stops)]
        for i, (p, n, stops) in enumerate(zip(params, steps, stop_ids))
        if n < p.min_new_tokens))

