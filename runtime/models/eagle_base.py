"""What the EAGLE-1/2 and EAGLE-3 draft heads share: checkpoint name handling, vocab tables that
are either in the checkpoint or borrowed from the target, and the interface the speculative
worker calls.

Interface of a draft head (LlamaForCausalLMEagle, LlamaForCausalLMEagle3):
  - `hidden_size`, `is_eagle3`, `num_kv_heads`, `head_dim` (of its one layer, per rank: what its
    one-layer KV pool holds), `draft_to_target` ((draft_vocab,) int64 target id of each draft id,
    on the model's device; None when draft ids are target ids).
  - `forward(input_ids (T,), positions (T,), batch, hidden_in (T, H_in))
        -> (hidden_next (T, H), hidden_for_logits (T, H))`: hidden_next is the next draft step's
    `hidden_in`; hidden_for_logits goes to `compute_logits`. The one attention layer is layer 0
    of `batch.kv_pool`.
  - `compute_logits(hidden (N, H)) -> (N, draft_vocab) float32`.
  - `load_weights(iter of (name, tensor))`, then `share_target(target_model)`: the embedding
    (and lm_head where the head has none of its own) come from the target.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
from sgl.runtime.layers.embedding import VocabParallelEmbedding
from sgl.runtime.models.weights import load_params
from torch import nn
from transformers import PretrainedConfig

logger = logging.getLogger(__name__)

EMBED_NAME = "embed_tokens.weight"
LM_HEAD_NAME = "lm_head.weight"


def strip_model_prefix(name: str) -> str:
    """Published heads name their tensors `fc.weight` or `model.fc.weight`; we use the former."""
    return name.removeprefix("model.")


class EagleHead(nn.Module):
    is_eagle3: bool = False

    def __init__(self, config: PretrainedConfig, tp_rank: int, tp_size: int) -> None:
        super().__init__()
        if getattr(config, "num_hidden_layers", 1) != 1:
            raise ValueError(f"draft heads with {config.num_hidden_layers} layers are not "
                             "supported (published EAGLE heads have one)")
        self.config = config
        self.hidden_size: int = config.hidden_size
        self.vocab_size: int = config.vocab_size  # the target's vocabulary
        # Allocated only if the checkpoint brings its own table (else the target's is shared).
        self.embed_tokens = self._meta_vocab_table(config.vocab_size, tp_rank, tp_size)
        self.has_own_embed = False

    def _meta_vocab_table(self, rows: int, tp_rank: int, tp_size: int) -> VocabParallelEmbedding:
        with torch.device("meta"):
            return VocabParallelEmbedding(rows, self.hidden_size, tp_rank, tp_size)

    # -- loading -------------------------------------------------------------------------------
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load a published checkpoint (names with or without `model.`), fusing q/k/v and
        gate/up. Raises if a parameter other than the shareable vocab tables is left unloaded."""
        params = {name: p for name, p in self.named_parameters() if not self._is_vocab_table(name)}
        load_params(params, self._checkpoint_names(weights), "draft checkpoint")
        self._after_load()

    def _checkpoint_names(self, weights: Iterable[tuple[str, torch.Tensor]]) -> Iterable[tuple[str, torch.Tensor]]:
        for name, tensor in weights:
            name = self._canonical_name(strip_model_prefix(name))
            if "rotary_emb.inv_freq" in name or self._load_special(name, tensor):
                continue
            yield name, tensor

    def _canonical_name(self, name: str) -> str:
        return name

    def _is_vocab_table(self, param_name: str) -> bool:
        return param_name.startswith(("embed_tokens.", "lm_head."))

    def _load_special(self, name: str, tensor: torch.Tensor) -> bool:
        """Tensors outside the plain parameter path; True if `name` was handled."""
        if name == EMBED_NAME:
            self._load_vocab_table(self.embed_tokens, tensor)
            self.has_own_embed = True
            return True
        return False

    def _load_vocab_table(self, table: VocabParallelEmbedding, tensor: torch.Tensor) -> None:
        like = self.fc.weight  # every head has an fc: its dtype and device are the model's
        table.weight = nn.Parameter(torch.empty(table.weight.shape, dtype=like.dtype, device=like.device),
                                    requires_grad=False)
        table.weight_loader(table.weight, tensor)

    def _after_load(self) -> None:
        return None

    # -- sharing with the target ---------------------------------------------------------------
    def share_target(self, target_model: nn.Module) -> None:
        """Borrow the target's embedding unless the checkpoint had its own (an own copy equal to
        the target's, as published heads ship it, is dropped for the target's too)."""
        target_embed = target_model.model.embed_tokens
        if target_embed.num_embeddings != self.vocab_size or target_embed.embedding_dim != self.hidden_size:
            raise ValueError(f"draft head expects a target embedding of ({self.vocab_size}, "
                             f"{self.hidden_size}), the target has ({target_embed.num_embeddings}, "
                             f"{target_embed.embedding_dim})")
        if not self.has_own_embed or torch.equal(self.embed_tokens.weight, target_embed.weight):
            self.embed_tokens = target_embed
        self._share_lm_head(target_model)
        self._check_shared()

    def _share_lm_head(self, target_model: nn.Module) -> None:
        raise NotImplementedError

    def _check_shared(self) -> None:
        for name, param in self.named_parameters():
            if param.is_meta:
                raise RuntimeError(f"draft head parameter {name} was neither loaded nor shared: "
                                   "call share_target(target_model) after load_weights")
