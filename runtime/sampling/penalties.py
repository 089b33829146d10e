"""Per-step penalty state: token counts and seen-token masks for the rows that ask for penalties.

Only rows with a non-neutral penalty get a (V,)-wide row; a batch where nobody asks builds nothing.
"""
from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from sgl.kernels.sampling import apply_penalties_ref
from sgl.runtime.sampling.params import SamplingParams


@dataclass
class PenaltyTensors:
    rows: torch.Tensor                          # (n,) int64: batch rows that ask for a penalty
    frequency_penalties: torch.Tensor           # (n,) float32
    presence_penalties: torch.Tensor            # (n,) float32
    repetition_penalties: torch.Tensor          # (n,) float32
    output_counts: torch.Tensor | None       # (n, V) float32, None when no frequency/presence
    prompt_output_mask: torch.Tensor | None  # (n, V) bool, None when no repetition penalty

    @classmethod
    def build(cls, params: Sequence[SamplingParams], prompt_ids: Sequence[Sequence[int]],
              output_ids: Sequence[Sequence[int]], vocab_size: int,
              device: torch.device) -> PenaltyTensors | None:
        """Tensors for the rows of `params` with any penalty, or None if no row has one."""
        rows = [i for i, p in enumerate(params) if _has_penalty(p)]
        if not rows:
            return None
        f32 = lambda xs: _to_device(torch.tensor(xs, dtype=torch.float32), device)
        sel = [params[i] for i in rows]
        has_counts = any(p.frequency_penalty != 0 or p.presence_penalty != 0 for p in sel)
        has_repetition = any(p.repetition_penalty != 1 for p in sel)
        return cls(
            rows=_to_device(torch.tensor(rows, dtype=torch.int64), device),
            frequency_penalties=f32([p.frequency_penalty for p in sel]),
            presence_penalties=f32([p.presence_penalty for p in sel]),
            repetition_penalties=f32([p.repetition_penalty for p in sel]),
            output_counts=(_token_counts([output_ids[i] for i in rows], vocab_size, device)
                           if has_counts else None),
            prompt_output_mask=(_seen_mask([prompt_ids[i] for i in rows],
                                           [output_ids[i] for i in rows], vocab_size, device)
                                if has_repetition else None),
        )

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """Penalize the selected rows of `logits` (bs, V) in place; returns it."""
        penalized = apply_penalties_ref(
            logits.index_select(0, self.rows), self.output_counts, self.prompt_output_mask,
            self.frequency_penalties, self.presence_penalties, self.repetition_penalties)
        return logits.index_copy_(0, self.rows, penalized)


def _has_penalty(p: SamplingParams) -> bool:
    return p.frequency_penalty != 0 or p.presence_penalty != 0 or p.repetition_penalty != 1


def _coo(id_lists: Sequence[Sequence[int]],
         device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column index tensors of a ragged list of token-id lists."""
    row_idx = list(itertools.chain.from_iterable([r] * len(ids) for r, ids in enumerate(id_lists)))
    col_idx = list(itertools.chain.from_iterable(id_lists))
    as_long = lambda xs: _to_device(torch.tensor(xs, dtype=torch.int64), device)
    return as_long(row_idx), as_long(col_idx)


def _token_counts(id_lists: Sequence[Sequence[int]], vocab_size: int,
                  device: torch.device) -> torch.Tensor:
    rows, cols = _coo(id_lists, device)
    counts = torch.zeros((len(id_lists), vocab_size), dtype=torch.float32, device=device)
    ones = torch.ones(rows.shape, dtype=torch.float32, device=device)
    return counts.index_put_((rows, cols), ones, accumulate=True)


def _seen_mask(prompt_lists: Sequence[Sequence[int]], output_lists: Sequence[Sequence[int]],
               vocab_size: int, device: torch.device) -> torch.Tensor:
    rows, cols = _coo([list(p) + list(o) for p, o in zip(prompt_lists, output_lists)], device)
    mask = torch.zeros((len(prompt_lists), vocab_size), dtype=torch.bool, device=device)
    return mask.index_put_((rows, cols), torch.ones(rows.shape, dtype=torch.bool, device=device))


def _to_device(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """An async host->device copy: a plain torch.tensor(..., device=cuda) waits for the GPU."""
    return t.to(device, non_blocking=True) if torch.device(device).type != "cpu" else t
