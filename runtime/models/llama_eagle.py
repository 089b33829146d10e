"""EAGLE-1/2 draft head in its published layout (the yuhuili EAGLE-LLaMA checkpoints, as SGLang's
LlamaForCausalLMEagle reads them):

    fc:        Linear(2H -> H, bias) over cat(embed(token), target hidden)
    layers.0:  one Llama decoder layer without input_layernorm (identity)
    output:    hidden + residual (no final norm), logits through the TARGET's lm_head

`hidden_in` is the target's final-normed hidden state (what `LlamaForCausalLM.forward` returns)
for the first draft step and the head's own output afterwards. The interface is documented in
eagle_base.py."""
from __future__ import annotations

import torch
from sgl.runtime.executor.forward_batch import ForwardBatch
from sgl.runtime.layers.linear import ColumnParallelLinear
from sgl.runtime.layers.rotary import RotaryEmbedding, get_rope
from sgl.runtime.models.eagle_base import LM_HEAD_NAME, EagleHead
from sgl.runtime.models.llama import LlamaDecoderLayer, LlamaForCausalLM, get_head_dim
from torch import nn
from transformers import PretrainedConfig


def draft_rotary(config: PretrainedConfig) -> RotaryEmbedding:
    return get_rope(config, get_head_dim(config))


class LlamaForCausalLMEagle(EagleHead):
    is_eagle3 = False

    def __init__(self, config: PretrainedConfig, tp_rank: int = 0, tp_size: int = 1) -> None:
        super().__init__(config, tp_rank, tp_size)
        hidden = config.hidden_size
        # Replicated on every rank: each rank needs the whole (T, H) input of the layer.
        self.fc = ColumnParallelLinear(2 * hidden, hidden, bool(getattr(config, "bias", True)),
                                       tp_rank, tp_size, gather_output=True)
        self.rotary_emb = draft_rotary(config)
        layer = LlamaDecoderLayer(config, 0, self.rotary_emb,
                                  LlamaForCausalLM.layer_options(config), tp_rank, tp_size)
        layer.input_layernorm = nn.Identity()  # EAGLE's first layer has no input norm
        self.layers = nn.ModuleList([layer])
        attn = layer.self_attn
        self.num_kv_heads, self.head_dim = attn.num_kv_heads, attn.head_dim
        self.lm_head: nn.Module | None = None  # the target's, set by share_target
        self.draft_to_target: torch.Tensor | None = None  # draft ids are target ids

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, batch: ForwardBatch,
                hidden_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embeds = self.embed_tokens(input_ids)  # (T, H)
        hidden = self.fc(torch.cat([embeds, hidden_in.to(embeds.dtype)], dim=-1))  # (T, H)
        # With residual None and an identity input norm the layer sees fc's output directly.
        hidden, residual = self.layers[0](positions, hidden, None, batch)
        out = hidden + residual  # (T, H)
        return out, out

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(N, H) -> (N, vocab) float32, through the target's lm_head."""
        return self.lm_head.get_logits(hidden)

    def _load_special(self, name: str, tensor: torch.Tensor) -> bool:
        if name == LM_HEAD_NAME:  # some exports carry the target's head; the target's is used
            return True
        return super()._load_special(name, tensor)

    def _share_lm_head(self, target_model: nn.Module) -> None:
        self.lm_head = target_model.lm_head
