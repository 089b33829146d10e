"""A step's logit rows (one per `batch.logits_indices`), materialised at most `max_rows` rows at a
time, so that a step's memory does not grow with how many rows ask for logprobs: 7,700 prompt
rows x a 128k vocabulary are 3.7 GiB of float32 logits at once, and as much again for their
log-softmax (issue #26). Sampling, prompt logprobs and the grammar mask all work chunk by chunk.

Chunks are fixed by the batch alone (rows [k * max_rows, (k + 1) * max_rows)), and computed in
that order: under tensor parallelism every rank runs the LM head's all-gather for the same chunks
(`materialize` on the followers)."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Optional

import torch

# Float32 logits materialised at once: 512 MiB (1,046 rows of a 128k vocabulary); a chunk's
# log-softmax takes as much again.
LOGIT_CHUNK_BYTES = 512 << 20


def auto_logit_rows(vocab_size: int) -> int:
    return max(64, min(8192, LOGIT_CHUNK_BYTES // (4 * vocab_size)))


class LogitRows:
    def __init__(self, num_rows: int, max_rows: int,
                 compute: Optional[Callable[[int, int], torch.Tensor]] = None,
                 logits: Optional[torch.Tensor] = None) -> None:
        """Either `logits` (num_rows, vocab), already computed (a CUDA graph's output, bounded by
        its captured size), or `compute(lo, hi)` -> the float32 logits of rows [lo, hi)."""
        assert (compute is None) != (logits is None)
        self.num_rows, self.max_rows = num_rows, max(1, max_rows)
        self._compute, self._logits = compute, logits

    @classmethod
    def of_hidden(cls, hidden: torch.Tensor, lm_head: Callable[[torch.Tensor], torch.Tensor],
                  max_rows: int) -> LogitRows:
        """Rows from hidden states (num_rows, H) through the LM head, a chunk at a time."""
        return cls(int(hidden.shape[0]), max_rows, compute=lambda lo, hi: lm_head(hidden[lo:hi]))

    def chunks(self) -> Iterator[tuple[int, int, torch.Tensor]]:
        """(lo, hi, float32 logits of rows [lo, hi)) for every chunk, in order."""
        for lo in range(0, self.num_rows, self.max_rows):
            hi = min(lo + self.max_rows, self.num_rows)
            yield lo, hi, self._logits[lo:hi] if self._logits is not None else self._compute(lo, hi)

    def all(self) -> torch.Tensor:
        """Every row at once (tests and callers that need the whole matrix)."""
        if self._logits is not None:
            return self._logits
        return torch.cat([x for _, _, x in self.chunks()]) if self.num_rows else self._compute(0, 0)

    def materialize(self) -> None:
        """Compute every chunk and drop it (a tensor-parallel follower's share of the work)."""
        for _ in self.chunks():
            pass
