"""The scheduler -> runner contract. Built on the CPU by the scheduler, moved to the device once
per step, passed explicitly to every layer (never through a global)."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Optional

import torch


class ForwardMode(enum.Enum):
    EXTEND = "extend"  # ragged: each request adds extend_len >= 1 tokens on top of prefix_len cached ones
    DECODE = "decode"  # every request adds exactly one token


@dataclass
class ForwardBatch:
    forward_mode: ForwardMode
    batch_size: int
    input_ids: torch.Tensor        # (num_tokens,) int64: the new tokens, requests concatenated
    positions: torch.Tensor        # (num_tokens,) int64: position of each new token in its sequence
    out_cache_loc: torch.Tensor    # (num_tokens,) int64: KV pool slot where each new token's K/V go
    req_pool_indices: torch.Tensor # (bs,) int64: each request's row in req_to_token
    prefix_lens: torch.Tensor      # (bs,) int64: tokens already in the KV pool before this step
    extend_lens: torch.Tensor      # (bs,) int64: new tokens this step
    seq_lens: torch.Tensor         # (bs,) int64: prefix_lens + extend_lens
    logits_indices: torch.Tensor   # (num_logits,) int64: rows of the hidden states that need logits
    # CPU copies of the per-request lengths, for backends that loop or plan on the host.
    prefix_lens_cpu: list[int] = field(default_factory=list)
    extend_lens_cpu: list[int] = field(default_factory=list)
    seq_lens_cpu: list[int] = field(default_factory=list)
    # Set by the runner before the forward: the pools and the attention backend of this step.
    req_to_token: Optional[torch.Tensor] = None  # (max_reqs, max_context_len) int32
    kv_pool: Any = None                          # MHATokenToKVPool
    attn_backend: Any = None                     # AttentionBackend
    # Speculative decoding. A tree mask replaces causal order among the new tokens (layout as in
    # kernels/attention/torch_ref.py: per request an (extend_len x seq_len) row-major bool block,
    # blocks concatenated; mask_indptr (bs + 1,) their offsets). None: causal.
    custom_mask: Optional[torch.Tensor] = None
    mask_indptr: Optional[torch.Tensor] = None
    # The compact tree mask (verify batches; what their CUDA graphs take): (bs, N, N) bool over
    # the new tokens only, N >= every extend_len; new token j of request i sees new token c iff
    # tree_mask[i, j, c], and always the whole cached prefix. Excludes custom_mask.
    tree_mask: torch.Tensor | None = None
    # Padded layout (verify CUDA graphs): request i owns rows [i * rows_per_req, (i + 1) *
    # rows_per_req) of the new tokens, its first extend_lens[i] real, the rest padding (KV to
    # slot 0, output ignored). 0: ragged, requests back to back.
    rows_per_req: int = 0
    # Set by a model whose `layers_to_capture` is non-empty (EAGLE-3 targets): (num_tokens,
    # len(layers_to_capture) * hidden) hidden states entering those layers, concatenated.
    aux_hidden_states: Optional[torch.Tensor] = None
    # Overlap scheduling: (num_tokens,) int64; where >= 0, the input id is row future_src[i] of
    # the tokens sampled by the previous step, still on the device when this batch was built.
    future_src: Optional[torch.Tensor] = None

    def set_custom_mask(self, blocks: list[torch.Tensor]) -> None:
        """Attach per-request (extend_len, seq_len) bool blocks as the batch's tree mask (packed
        as custom_mask + mask_indptr); a masked batch always runs in EXTEND mode."""
        lens = torch.tensor([b.numel() for b in blocks], dtype=torch.int64)
        self.custom_mask = torch.cat([b.flatten() for b in blocks])
        self.mask_indptr = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(lens, 0)])
        self.forward_mode = ForwardMode.EXTEND

    def set_tree_mask(self, blocks: list[torch.Tensor]) -> None:
        """Attach per-request (extend_len, extend_len) bool blocks over the new tokens (the
        prefix is always visible) as the compact tree mask; EXTEND mode."""
        width = max(b.shape[0] for b in blocks)
        self.tree_mask = torch.zeros((len(blocks), width, width), dtype=torch.bool)
        for i, b in enumerate(blocks):
            self.tree_mask[i, :b.shape[0], :b.shape[0]] = b
        self.forward_mode = ForwardMode.EXTEND

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[0])

    _DEVICE_FIELDS = ("input_ids", "positions", "out_cache_loc", "req_pool_indices", "prefix_lens",
                      "extend_lens", "seq_lens", "logits_indices")

    def to(self, device: torch.device) -> "ForwardBatch":
        """Move the index tensors in one host->device copy (they are all int64 and 1-D)."""
        if self.input_ids.device == torch.device(device):
            return self
        parts = [getattr(self, name) for name in self._DEVICE_FIELDS]
        packed = torch.cat(parts)
        if device.type == "cuda":
            packed = packed.pin_memory()
        moved = packed.to(device, non_blocking=True)
        for name, part in zip(self._DEVICE_FIELDS, torch.split(moved, [p.numel() for p in parts])):
            setattr(self, name, part)
        if self.custom_mask is not None:
            self.custom_mask = self.custom_mask.to(device, non_blocking=True)
            self.mask_indptr = self.mask_indptr.to(device, non_blocking=True)
        if self.tree_mask is not None:
            self.tree_mask = self.tree_mask.to(device, non_blocking=True)
        return self

    @classmethod
    def build(cls, input_ids: list[int], positions: list[int], out_cache_loc: list[int],
              req_pool_indices: list[int], prefix_lens: list[int], extend_lens: list[int],
              logits_indices: list[int]) -> "ForwardBatch":
        """Assemble a batch from Python lists (the scheduler's side)."""
        seq_lens = [p + e for p, e in zip(prefix_lens, extend_lens)]
        mode = ForwardMode.DECODE if all(e == 1 for e in extend_lens) else ForwardMode.EXTEND
        t = lambda x: torch.tensor(x, dtype=torch.int64)  # noqa: E731
        return cls(
            forward_mode=mode, batch_size=len(extend_lens), input_ids=t(input_ids),
            positions=t(positions), out_cache_loc=t(out_cache_loc),
            req_pool_indices=t(req_pool_indices), prefix_lens=t(prefix_lens),
            extend_lens=t(extend_lens), seq_lens=t(seq_lens), logits_indices=t(logits_indices),
            prefix_lens_cpu=list(prefix_lens), extend_lens_cpu=list(extend_lens), seq_lens_cpu=seq_lens,
        )
