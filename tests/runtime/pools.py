"""Just enough of a model runner for model-level tests: a KV pool, request rows, slot
bookkeeping and ForwardBatch building over them (what the runner does, without the scheduler)."""
from __future__ import annotations

import torch
from sgl.runtime.cache.memory_pool import MHATokenToKVPool, ReqTable, ReqToTokenPool
from sgl.runtime.executor.attention import get_attention_backend
from sgl.runtime.executor.forward_batch import ForwardBatch


class Pools:
    def __init__(self, num_kv_heads: int, head_dim: int, num_layers: int, num_slots: int = 64,
                 seed: int = 2, dtype: torch.dtype = torch.float32, width: int = 64) -> None:
        self.kv_pool = MHATokenToKVPool(num_slots, num_kv_heads, head_dim, num_layers, dtype, "cpu")
        self.req_to_token = ReqToTokenPool(4, width, "cpu")
        self.table = ReqTable(4, width)
        # Slots in random order, so that a kernel reading the wrong slot reads someone else's K/V.
        self.free_slots = (torch.randperm(num_slots, generator=torch.Generator().manual_seed(seed)) + 1).tolist()
        self.backend = get_attention_backend("torch_native")()
        self.seq_lens: dict[int, int] = {}

    def batch(self, chunks: dict[int, list[int]]) -> ForwardBatch:
        """chunks: request row -> its new tokens, on top of what the row already holds."""
        input_ids, positions, out_loc, prefix_lens, extend_lens = [], [], [], [], []
        for row, tokens in chunks.items():
            prefix_len = self.seq_lens.get(row, 0)
            slots = [self.free_slots.pop() for _ in tokens]
            self.table.write(row, prefix_len, torch.tensor(slots))
            input_ids += tokens
            positions += range(prefix_len, prefix_len + len(tokens))
            out_loc += slots
            prefix_lens.append(prefix_len)
            extend_lens.append(len(tokens))
            self.seq_lens[row] = prefix_len + len(tokens)
        self.req_to_token.apply(self.table.flush())
        batch = ForwardBatch.build(input_ids, positions, out_loc, list(chunks), prefix_lens,
                                   extend_lens, list(range(len(input_ids))))
        batch.req_to_token, batch.kv_pool = self.req_to_token.req_to_token, self.kv_pool
        batch.attn_backend = self.backend
        return batch
