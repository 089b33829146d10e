"""Llama family (Llama 2/3/3.x, SmolLM, Mistral) on the shared tensor-parallel layers. Qwen2 and
Qwen3 are small subclasses (see qwen2.py, qwen3.py): they differ only in `LayerOptions`."""
from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from sgl.runtime.executor.forward_batch import ForwardBatch
from sgl.runtime.layers.activation import SiluAndMul
from sgl.runtime.layers.attention import RadixAttention
from sgl.runtime.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from sgl.runtime.layers.fp8 import Fp8Config
from sgl.runtime.layers.lazy_tensor import full_weight
from sgl.runtime.layers.linear import (
    MergedColumnParallelLinear,
    QKVParallelLinear,
    RowParallelLinear,
    default_weight_loader,
)
from sgl.runtime.layers.norm import RMSNorm
from sgl.runtime.layers.rotary import RotaryEmbedding, rope_params_from_config
from torch import nn
from transformers import PretrainedConfig

logger = logging.getLogger(__name__)

# Checkpoint name of llama.cpp's per-frequency rope factors (see RotaryEmbedding.apply_freq_factors).
ROPE_FREQS_NAME = "rope_freqs.weight"

# Per-layer FP8 KV cache scales as published: compressed-tensors' kv_cache_scheme (k_scale,
# v_scale), older llm-compressor output scales, AutoFP8's one kv_scale for both.
_KV_SCALE_RE = re.compile(r"model\.layers\.(\d+)\.self_attn\.(k_scale|v_scale|kv_scale|"
                          r"k_proj\.output_scale|v_proj\.output_scale)$")

# HF name piece -> (our fused parameter piece, shard id)
_STACKED_PARAMS = [
    (".q_proj.", ".qkv_proj.", "q"),
    (".k_proj.", ".qkv_proj.", "k"),
    (".v_proj.", ".qkv_proj.", "v"),
    (".gate_proj.", ".gate_up_proj.", 0),
    (".up_proj.", ".gate_up_proj.", 1),
]


@dataclass(frozen=True)
class LayerOptions:
    """What distinguishes the members of the family inside a decoder layer."""
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False  # per-head RMSNorm on q and k before rotary (Qwen3)
    quant: Fp8Config | None = None  # FP8 weights in the linears (--quantization fp8)


def get_head_dim(config: PretrainedConfig) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


class LlamaMLP(nn.Module):
    def __init__(self, config: PretrainedConfig, bias: bool, tp_rank: int, tp_size: int,
                 quant: Fp8Config | None = None) -> None:
        super().__init__()
        hidden, inter = config.hidden_size, config.intermediate_size
        self.gate_up_proj = MergedColumnParallelLinear(hidden, [inter, inter], bias, tp_rank, tp_size,
                                                       quant=quant)
        self.down_proj = RowParallelLinear(inter, hidden, bias, tp_rank, tp_size, quant=quant)
        self.act_fn = SiluAndMul()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (T, hidden) -> (T, 2 * inter / tp) -> (T, inter / tp) -> (T, hidden)
        return self.down_proj(self.act_fn(self.gate_up_proj(x)))


class LlamaAttention(nn.Module):
    def __init__(self, config: PretrainedConfig, layer_id: int, rotary_emb: RotaryEmbedding,
                 options: LayerOptions, tp_rank: int, tp_size: int,
                 input_size: int | None = None) -> None:
        super().__init__()
        self.head_dim = head_dim = get_head_dim(config)
        # input_size: width of the q/k/v input when it is not hidden_size (EAGLE-3's 2 * hidden).
        self.qkv_proj = QKVParallelLinear(input_size or config.hidden_size, head_dim,
                                          config.num_attention_heads,
                                          config.num_key_value_heads, options.qkv_bias, tp_rank, tp_size,
                                          quant=options.quant)
        self.num_heads, self.num_kv_heads = self.qkv_proj.num_heads, self.qkv_proj.num_kv_heads
        self.q_size, self.kv_size = self.num_heads * head_dim, self.num_kv_heads * head_dim
        self.o_proj = RowParallelLinear(config.num_attention_heads * head_dim, config.hidden_size,
                                        options.o_bias, tp_rank, tp_size, quant=options.quant)
        self.q_norm = self.k_norm = None
        if options.qk_norm:
            self.q_norm = RMSNorm(head_dim, config.rms_norm_eps)
            self.k_norm = RMSNorm(head_dim, config.rms_norm_eps)
        self.rotary_emb = rotary_emb  # shared by all layers
        self.attn = RadixAttention(self.num_heads, head_dim, head_dim ** -0.5, self.num_kv_heads, layer_id)

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor,
                batch: ForwardBatch) -> torch.Tensor:
        num_tokens = hidden.shape[0]
        qkv = self.qkv_proj(hidden)  # (T, (Hq + 2 * Hkv) * D), this rank's heads
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        if self.q_norm is not None:
            q = self.q_norm(q.reshape(num_tokens, self.num_heads, self.head_dim))  # (T, Hq, D)
            k = self.k_norm(k.reshape(num_tokens, self.num_kv_heads, self.head_dim))  # (T, Hkv, D)
        q, k = self.rotary_emb(positions, q.reshape(num_tokens, -1), k.reshape(num_tokens, -1))
        out = self.attn(q, k, v.contiguous(), batch)  # (T, Hq * D)
        return self.o_proj(out)  # (T, hidden)


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config: PretrainedConfig, layer_id: int, rotary_emb: RotaryEmbedding,
                 options: LayerOptions, tp_rank: int, tp_size: int) -> None:
        super().__init__()
        self.self_attn = LlamaAttention(config, layer_id, rotary_emb, options, tp_rank, tp_size)
        self.mlp = LlamaMLP(config, options.mlp_bias, tp_rank, tp_size, options.quant)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor,
                residual: torch.Tensor | None,
                batch: ForwardBatch) -> tuple[torch.Tensor, torch.Tensor]:
        # The residual stream is carried separately so that each add fuses into the next norm.
        if residual is None:
            residual, hidden = hidden, self.input_layernorm(hidden)
        else:
            hidden, residual = self.input_layernorm(hidden, residual)
        hidden = self.self_attn(positions, hidden, batch)
        hidden, residual = self.post_attention_layernorm(hidden, residual)
        return self.mlp(hidden), residual


class LlamaModel(nn.Module):
    def __init__(self, config: PretrainedConfig, options: LayerOptions, tp_rank: int,
                 tp_size: int) -> None:
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size, tp_rank, tp_size)
        theta, rope_scaling = rope_params_from_config(config)
        head_dim = get_head_dim(config)
        rotary_dim = int(head_dim * getattr(config, "partial_rotary_factor", 1.0))
        self.rotary_emb = RotaryEmbedding(head_dim, rotary_dim, config.max_position_embeddings,
                                          theta, rope_scaling)
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(config, i, self.rotary_emb, options, tp_rank, tp_size)
            for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        # EAGLE-3 targets: the hidden states entering these layers (num_layers: the last layer's
        # output before the final norm) go to `batch.aux_hidden_states`, in this order.
        self.layers_to_capture: tuple[int, ...] = ()

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                batch: ForwardBatch) -> torch.Tensor:
        hidden = self.embed_tokens(input_ids)  # (T, hidden)
        residual = None
        captured: dict[int, torch.Tensor] | None = {} if self.layers_to_capture else None
        for i, layer in enumerate(self.layers):
            if captured is not None and i in self.layers_to_capture:
                captured[i] = hidden if residual is None else hidden + residual
            hidden, residual = layer(positions, hidden, residual, batch)
        hidden, pre_norm = self.norm(hidden, residual)
        if captured is not None:
            captured[len(self.layers)] = pre_norm
            # (T, len(layers_to_capture) * hidden)
            batch.aux_hidden_states = torch.cat([captured[i] for i in self.layers_to_capture], -1)
        return hidden


class LlamaForCausalLM(nn.Module):
    def __init__(self, config: PretrainedConfig, tp_rank: int = 0, tp_size: int = 1,
                 quant_config: Fp8Config | None = None) -> None:
        super().__init__()
        self.config = config
        self.tie_word_embeddings = bool(getattr(config, "tie_word_embeddings", False))
        # The decoder layers' linears take FP8 weights; embeddings and the LM head never do.
        options = dataclasses.replace(self.layer_options(config), quant=quant_config)
        self.model = LlamaModel(config, options, tp_rank, tp_size)
        if self.tie_word_embeddings:
            self.lm_head = self.model.embed_tokens
        else:
            self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size, tp_rank, tp_size)

    @classmethod
    def layer_options(cls, config: PretrainedConfig) -> LayerOptions:
        attention_bias = bool(getattr(config, "attention_bias", False))
        return LayerOptions(qkv_bias=attention_bias, o_bias=attention_bias,
                            mlp_bias=bool(getattr(config, "mlp_bias", False)))

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                batch: ForwardBatch) -> torch.Tensor:
        """input_ids, positions: (T,) int64 -> final-normed hidden states (T, hidden)."""
        return self.model(input_ids, positions, batch)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(N, hidden) -> (N, vocab) float32."""
        return self.lm_head.get_logits(hidden)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load HF-named tensors, fusing q/k/v and gate/up into the merged parameters. Raises if
        any parameter is left unloaded."""
        load_params(dict(self.named_parameters()), self._checkpoint_names(weights))

    def _checkpoint_names(self, weights: Iterable[tuple[str, torch.Tensor]]) -> Iterable[tuple[str, torch.Tensor]]:
        for name, tensor in weights:
            if "rotary_emb.inv_freq" in name:
                continue
            if name == ROPE_FREQS_NAME:
                self.model.rotary_emb.apply_freq_factors(full_weight(tensor))
                continue
            kv_scale = _KV_SCALE_RE.match(name)
            if kv_scale:  # read by an FP8 KV pool (ModelRunner), unused otherwise
                attn = self.model.layers[int(kv_scale[1])].self_attn.attn
                value = float(full_weight(tensor).float().reshape(-1)[0])
                attn.set_kv_scale(kv_scale[2].split("_")[0], value)  # "k", "v" or "kv"
                continue
            if self.tie_word_embeddings and name.startswith("lm_head."):
                name = name.replace("lm_head.", "model.embed_tokens.")
            yield name, tensor


def load_params(params: dict[str, nn.Parameter], weights: Iterable[tuple[str, torch.Tensor]],
                what: str = "checkpoint") -> None:
    """Load HF-named tensors into `params`, fusing q/k/v and gate/up into the merged parameters
    (each parameter's weight_loader picks its slice). Raises if a parameter is left (partly)
    unloaded."""
    loaded: set[tuple[str, object]] = set()  # (parameter, shard): fused ones load in pieces
    for name, tensor in weights:
        name, shard_id = _to_param_name(name)
        if name not in params:
            logger.warning("ignoring %s tensor %s: no such parameter", what, name)
            continue
        param = params[name]
        getattr(param, "weight_loader", default_weight_loader)(param, tensor, shard_id)
        loaded.add((name, shard_id))
    missing = [name for name in params
               if any((name, shard) not in loaded for shard in _expected_shards(name))]
    if missing:
        raise ValueError(f"{what} lacks (parts of) {len(missing)} parameters, e.g. {missing[:5]}")


def checkpoint_shards(module_name: str) -> list[tuple[str, object]]:
    """The checkpoint's modules fused into one of ours (q/k/v, gate/up) with their shard ids, or
    the module itself: "model.layers.0.mlp.gate_up_proj" -> [(...gate_proj, 0), (...up_proj, 1)]."""
    dotted = module_name + "."
    pieces = [(dotted.replace(ours, hf)[:-1], shard) for hf, ours, shard in _STACKED_PARAMS
              if ours in dotted]
    return pieces or [(module_name, None)]


def _expected_shards(param_name: str) -> list[object]:
    shards = [shard for _, piece, shard in _STACKED_PARAMS if piece in param_name]
    return shards or [None]


def _to_param_name(name: str) -> tuple[str, object]:
    for hf_piece, our_piece, shard_id in _STACKED_PARAMS:
        if hf_piece in name:
            return name.replace(hf_piece, our_piece), shard_id
    return name, None
