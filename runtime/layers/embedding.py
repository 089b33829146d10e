"""Vocab-parallel embedding and LM head: each rank holds a contiguous block of vocab rows."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from sgl.kernels.linear import linear
from sgl.runtime.layers.lazy_tensor import Loaded
from sgl.runtime.layers.linear import ShardId, tp_all_gather, tp_all_reduce
from torch import nn


class VocabParallelEmbedding(nn.Module):
    """Rows [vocab_start, vocab_end) of the (vocab padded to a multiple of tp_size) table live on
    this rank; lookups outside the block give zeros, and an all-reduce sums the ranks."""

    def __init__(self, num_embeddings: int, embedding_dim: int, tp_rank: int = 0, tp_size: int = 1,
                 params_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.tp_rank, self.tp_size = tp_rank, tp_size
        padded_vocab = -(-num_embeddings // tp_size) * tp_size
        self.num_embeddings_per_rank = padded_vocab // tp_size
        self.vocab_start = tp_rank * self.num_embeddings_per_rank
        self.vocab_end = self.vocab_start + self.num_embeddings_per_rank
        dtype = params_dtype or torch.get_default_dtype()
        self.weight = nn.Parameter(torch.empty(self.num_embeddings_per_rank, embedding_dim, dtype=dtype),
                                   requires_grad=False)
        self.weight.weight_loader = self.weight_loader

    def weight_loader(self, param: nn.Parameter, loaded: Loaded, shard_id: ShardId = None) -> None:
        if loaded.shape[1:] != param.shape[1:] or loaded.shape[0] != self.num_embeddings:
            raise ValueError(f"shape mismatch: embedding ({self.num_embeddings}, {self.embedding_dim}) "
                             f"vs checkpoint {tuple(loaded.shape)}")
        start = min(self.vocab_start, self.num_embeddings)
        end = min(self.vocab_end, self.num_embeddings)
        rows = loaded.narrow(0, start, end - start)  # a LazyTensor reads only this block from disk
        param.data[:rows.shape[0]].copy_(rows)
        param.data[rows.shape[0]:].zero_()  # padding rows of the last rank

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        # input_ids: (T,) -> (T, embedding_dim)
        if self.tp_size == 1:
            return F.embedding(input_ids, self.weight)
        in_block = (input_ids >= self.vocab_start) & (input_ids < self.vocab_end)
        local_ids = torch.where(in_block, input_ids - self.vocab_start, 0)
        out = F.embedding(local_ids, self.weight) * in_block.unsqueeze(-1).to(self.weight.dtype)
        return tp_all_reduce(out, self.tp_size)

    def get_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (N, embedding_dim) -> logits (N, num_embeddings) float32, using this table as the
        output projection (also how tied embeddings produce logits)."""
        logits = linear(hidden, self.weight)  # (N, vocab / tp)
        logits = tp_all_gather(logits, self.tp_size)[:, :self.num_embeddings]
        return logits.float()


class ParallelLMHead(VocabParallelEmbedding):
    """The untied output projection; only `get_logits` is used."""

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("ParallelLMHead computes logits with get_logits(hidden)")
