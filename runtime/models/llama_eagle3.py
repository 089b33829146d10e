"""EAGLE-3 draft head in its published layout (as SGLang's LlamaForCausalLMEagle3 reads it):

    fc:        Linear(3H -> H, no bias) over the target's low/mid/high hidden states, applied only
               when the input is 3H wide (later draft steps feed the head's own H-wide output)
    midlayer:  a decoder layer whose attention input is cat(input_layernorm(embeds),
               hidden_norm(hidden)) (2H wide); the residual is the un-normed hidden
    norm:      final RMSNorm before the head's own lm_head of draft_vocab_size rows
    d2t, t2d:  draft id -> target id offsets (target = draft + d2t[draft]); target id -> in the
               draft vocab (loaded, unused at run time)

The target captures its hidden states at `eagle3_capture_layers(...)` (LlamaModel's
`layers_to_capture`). The interface is documented in eagle_base.py."""
from __future__ import annotations

import torch
from sgl.runtime.executor.forward_batch import ForwardBatch
from sgl.runtime.layers.linear import ColumnParallelLinear
from sgl.runtime.layers.norm import RMSNorm
from sgl.runtime.models.eagle_base import LM_HEAD_NAME, EagleHead
from sgl.runtime.models.llama import LlamaAttention, LlamaForCausalLM, LlamaMLP
from sgl.runtime.models.llama_eagle import draft_rotary
from torch import nn
from transformers import PretrainedConfig


def eagle3_capture_layers(draft_config: PretrainedConfig, target_num_layers: int) -> list[int]:
    """The target layers whose INPUT hidden state (hidden + residual; the embeddings for layer 0)
    the head was trained on, for `LlamaModel.layers_to_capture`. The config's
    `eagle_config.eagle_aux_hidden_state_layer_ids` name layer OUTPUTS, i.e. the inputs of the
    next layers (as SGLang reads them); without it SGLang's default [2, n // 2, n - 3]."""
    eagle_config = getattr(draft_config, "eagle_config", None) or {}
    if not isinstance(eagle_config, dict):
        eagle_config = vars(eagle_config)
    layer_ids = eagle_config.get("eagle_aux_hidden_state_layer_ids")
    n = target_num_layers
    layers = [2, n // 2, n - 3] if layer_ids is None else [int(i) + 1 for i in layer_ids]
    if any(not 0 <= i <= n for i in layers):
        raise ValueError(f"EAGLE-3 capture layers {layers} do not fit a target of {n} layers")
    return layers


class Eagle3MidLayer(nn.Module):
    def __init__(self, config: PretrainedConfig, rotary_emb: nn.Module, tp_rank: int,
                 tp_size: int) -> None:
        super().__init__()
        hidden, eps = config.hidden_size, config.rms_norm_eps
        options = LlamaForCausalLM.layer_options(config)
        self.self_attn = LlamaAttention(config, 0, rotary_emb, options, tp_rank, tp_size,
                                        input_size=2 * hidden)
        self.mlp = LlamaMLP(config, options.mlp_bias, tp_rank, tp_size)
        self.input_layernorm = RMSNorm(hidden, eps)
        self.hidden_norm = RMSNorm(hidden, eps)
        self.post_attention_layernorm = RMSNorm(hidden, eps)

    def forward(self, positions: torch.Tensor, embeds: torch.Tensor, hidden: torch.Tensor,
                batch: ForwardBatch) -> tuple[torch.Tensor, torch.Tensor]:
        residual = hidden
        attn_in = torch.cat([self.input_layernorm(embeds), self.hidden_norm(hidden)], dim=-1)  # (T, 2H)
        hidden = self.self_attn(positions, attn_in, batch)  # (T, H)
        hidden, residual = self.post_attention_layernorm(hidden, residual)
        return self.mlp(hidden), residual


class LlamaForCausalLMEagle3(EagleHead):
    is_eagle3 = True

    def __init__(self, config: PretrainedConfig, tp_rank: int = 0, tp_size: int = 1) -> None:
        super().__init__(config, tp_rank, tp_size)
        hidden = config.hidden_size
        self.draft_vocab_size: int = getattr(config, "draft_vocab_size", None) or config.vocab_size
        self.fc = ColumnParallelLinear(3 * hidden, hidden, bool(getattr(config, "bias", False)),
                                       tp_rank, tp_size, gather_output=True)
        self.rotary_emb = draft_rotary(config)
        self.midlayer = Eagle3MidLayer(config, self.rotary_emb, tp_rank, tp_size)
        self.norm = RMSNorm(hidden, config.rms_norm_eps)
        attn = self.midlayer.self_attn
        self.num_kv_heads, self.head_dim = attn.num_kv_heads, attn.head_dim
        self.tie_word_embeddings = bool(getattr(config, "tie_word_embeddings", False))
        if self.tie_word_embeddings and self.draft_vocab_size != config.vocab_size:
            raise ValueError("an EAGLE-3 head with tied embeddings needs draft_vocab_size == vocab_size")
        self.lm_head = (self.embed_tokens if self.tie_word_embeddings
                        else self._meta_vocab_table(self.draft_vocab_size, tp_rank, tp_size))
        self.has_own_lm_head = False
        self.register_buffer("d2t", torch.zeros(self.draft_vocab_size, dtype=torch.int64))
        self.register_buffer("t2d", torch.ones(config.vocab_size, dtype=torch.bool))
        self.has_d2t = False
        # (draft_vocab,) int64 target id of each draft id: arange + d2t, refreshed by loading.
        self.register_buffer("draft_to_target", self._draft_ids_to_target(), persistent=False)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, batch: ForwardBatch,
                hidden_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embeds = self.embed_tokens(input_ids)  # (T, H)
        hidden = hidden_in.to(embeds.dtype)
        if hidden.shape[-1] != self.hidden_size:  # the target's fused low/mid/high (T, 3H)
            hidden = self.fc(hidden)
        hidden, residual = self.midlayer(positions, embeds, hidden, batch)
        for_logits, hidden_next = self.norm(hidden, residual)
        return hidden_next, for_logits

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(N, H) -> (N, draft_vocab) float32; map ids with `draft_to_target`."""
        return self.lm_head.get_logits(hidden)

    # -- loading -------------------------------------------------------------------------------
    def _canonical_name(self, name: str) -> str:
        # Checkpoints converted for vLLM's speculators name the mid layer `layers.0`.
        return "midlayer." + name[len("layers.0."):] if name.startswith("layers.0.") else name

    def _draft_ids_to_target(self) -> torch.Tensor:
        return torch.arange(self.draft_vocab_size, device=self.d2t.device) + self.d2t

    def _load_special(self, name: str, tensor: torch.Tensor) -> bool:
        if name in ("d2t", "t2d"):
            buffer = getattr(self, name)
            if tensor.shape != buffer.shape:
                raise ValueError(f"draft checkpoint {name} has shape {tuple(tensor.shape)}, "
                                 f"expected {tuple(buffer.shape)} (draft_vocab_size, vocab_size)")
            buffer.copy_(tensor)
            self.has_d2t |= name == "d2t"
            return True
        if name == LM_HEAD_NAME:
            if not self.tie_word_embeddings:
                self._load_vocab_table(self.lm_head, tensor)
                self.has_own_lm_head = True
            return True
        return super()._load_special(name, tensor)

    def _after_load(self) -> None:
        if self.draft_vocab_size != self.vocab_size and not self.has_d2t:
            raise ValueError(f"draft checkpoint lacks d2t, needed to map its {self.draft_vocab_size} "
                             f"draft ids onto the {self.vocab_size} target ids")
        draft_to_target = self._draft_ids_to_target()
        if not bool(((draft_to_target >= 0) & (draft_to_target < self.vocab_size)).all()):
            raise ValueError("draft checkpoint d2t maps draft ids outside the target vocabulary")
        self.draft_to_target = draft_to_target

    def _share_lm_head(self, target_model: nn.Module) -> None:
        if self.tie_word_embeddings:
            self.lm_head = self.embed_tokens
        elif not self.has_own_lm_head:
            if self.draft_vocab_size != self.vocab_size:
                raise ValueError(f"draft checkpoint lacks lm_head.weight, and its draft vocab "
                                 f"({self.draft_vocab_size}) is not the target's to borrow")
            self.lm_head = target_model.lm_head
