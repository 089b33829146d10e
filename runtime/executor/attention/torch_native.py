"""Pure-torch attention backend: SDPA per request over the pool. Correct everywhere, fast nowhere;
it is the CPU path and the baseline the Triton backend is checked against. It also takes the
verify graphs' padded layout (`batch.rows_per_req`), so that their static batches can be
checked on the CPU (padding rows give zeros)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from sgl.kernels.attention.torch_ref import extend_attention_ref
from sgl.runtime.executor.attention.base import AttentionBackend

if TYPE_CHECKING:
    from sgl.runtime.executor.forward_batch import ForwardBatch
    from sgl.runtime.layers.attention import RadixAttention


class TorchNativeBackend(AttentionBackend):
    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                layer: RadixAttention, batch: ForwardBatch) -> torch.Tensor:
        num_tokens = q.shape[0]
        q = q.view(num_tokens, layer.num_heads, layer.head_dim)  # (T, Hq, D)
        k = k.view(num_tokens, layer.num_kv_heads, layer.head_dim)  # (T, Hkv, D)
        v = v.view(num_tokens, layer.num_kv_heads, layer.head_dim)
        batch.kv_pool.set_kv(layer.layer_id, batch.out_cache_loc, k, v)
        k_buffer, v_buffer = batch.kv_pool.get_kv(layer.layer_id)
        k_scale, v_scale = batch.kv_pool.get_scales(layer.layer_id)  # 1.0 unless FP8
        prefix_lens = batch.prefix_lens_cpu or batch.prefix_lens
        extend_lens = batch.extend_lens_cpu or batch.extend_lens
        real = None
        if batch.rows_per_req:  # padded layout: attend with the real rows, zeros elsewhere
            lens = torch.as_tensor(extend_lens, device=q.device)
            cols = torch.arange(batch.rows_per_req, device=q.device)
            real = ((torch.arange(lens.shape[0], device=q.device) * batch.rows_per_req)[:, None]
                    + cols)[cols < lens[:, None]]  # (sum(extend_lens),) rows in q
            q = q[real]
        out = extend_attention_ref(q, k_buffer, v_buffer, batch.req_to_token,
                                   batch.req_pool_indices, prefix_lens, extend_lens, layer.scaling,
                                   custom_mask=batch.custom_mask, mask_indptr=batch.mask_indptr,
                                   tree_mask=batch.tree_mask, sliding_window=layer.sliding_window,
                                   logit_cap=layer.logit_cap, k_scale=k_scale, v_scale=v_scale)
        if real is not None:
            out = torch.zeros((num_tokens, *out.shape[1:]), dtype=out.dtype,
                              device=out.device).index_copy_(0, real, out)
        return out.reshape(num_tokens, layer.num_heads * layer.head_dim)
