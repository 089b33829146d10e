"""Llama family (Llama 2/3/3.x, SmolLM, Mistral) on the shared tensor-parallel layers. Qwen2 and
Qwen3 are small subclasses (see qwen2.py, qwen3.py): they differ only in `LayerOptions`."""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from sgl.runtime.executor.forward_batch import ForwardBatch
from sgl.runtime.layers.attention import RadixAttention
from sgl.runtime.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from sgl.runtime.layers.fp8 import Fp8Config
from sgl.runtime.layers.lazy_tensor import full_weight
from sgl.runtime.layers.linear import QKVParallelLinear, RowParallelLinear
from sgl.runtime.layers.mlp import GatedMLP
from sgl.runtime.layers.norm import RMSNorm
from sgl.runtime.layers.rotary import RotaryEmbedding, get_rope
from sgl.runtime.models.weights import load_params
from torch import nn
from transformers import PretrainedConfig

# Checkpoint name of llama.cpp's per-frequency rope factors (see RotaryEmbedding.apply_freq_factors).
ROPE_FREQS_NAME = "rope_freqs.weight"
_STACK_NAMES = ("embed_tokens.", "layers.", "norm.")  # a bare decoder stack's checkpoint names

# Per-layer FP8 KV cache scales as published: compressed-tensors' kv_cache_scheme (k_scale,
# v_scale), older llm-compressor output scales, AutoFP8's one kv_scale for both.
_KV_SCALE_RE = re.compile(r"model\.layers\.(\d+)\.self_attn\.(k_scale|v_scale|kv_scale|"
                          r"k_proj\.output_scale|v_proj\.output_scale)$")

# Builds layer `layer_id`'s MLP: (config, layer_id, options, tp_rank, tp_size) -> module.
MLPFactory = Callable[[PretrainedConfig, int, "LayerOptions", int, int], nn.Module]


@dataclass(frozen=True)
class LayerOptions:
    """What distinguishes the members of the family inside a decoder layer."""
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False  # per-head RMSNorm on q and k before rotary (Qwen3)
    norm: type[nn.Module] = RMSNorm  # every norm of the layer (Gemma: GemmaRMSNorm)
    quant: Fp8Config | None = None  # FP8 weights in the linears (--quantization fp8)


def get_head_dim(config: PretrainedConfig) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def layer_sliding_window(config: PretrainedConfig, layer_id: int) -> int:
    """Keys a query of layer `layer_id` sees (itself included), 0 = all: the config's
    sliding_window on the layers its `layer_types` call "sliding_attention" (Gemma 2/3, Qwen2),
    on every layer where it names no layer types (Mistral, Mixtral, Phi-3)."""
    window = getattr(config, "sliding_window", None) or 0
    if not window or getattr(config, "use_sliding_window", True) is False:
        return 0
    layer_types = getattr(config, "layer_types", None)
    if layer_types:
        return window if layer_types[layer_id] == "sliding_attention" else 0
    return window


class LlamaMLP(GatedMLP):
    def __init__(self, config: PretrainedConfig, bias: bool, tp_rank: int, tp_size: int,
                 quant: Fp8Config | None = None) -> None:
        super().__init__(config.hidden_size, config.intermediate_size, bias, tp_rank, tp_size,
                         getattr(config, "hidden_act", "silu"), quant=quant)


def dense_mlp(config: PretrainedConfig, layer_id: int, options: LayerOptions, tp_rank: int,
              tp_size: int) -> nn.Module:
    return LlamaMLP(config, options.mlp_bias, tp_rank, tp_size, options.quant)


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
            self.q_norm = options.norm(head_dim, config.rms_norm_eps)
            self.k_norm = options.norm(head_dim, config.rms_norm_eps)
        self.rotary_emb = rotary_emb  # shared by all layers (of one layer type)
        # Gemma scales by query_pre_attn_scalar ** -0.5 and soft-caps the scores (Gemma 2).
        scaling = (getattr(config, "query_pre_attn_scalar", None) or head_dim) ** -0.5
        self.attn = RadixAttention(self.num_heads, head_dim, scaling, self.num_kv_heads, layer_id,
                                   sliding_window=layer_sliding_window(config, layer_id),
                                   logit_cap=getattr(config, "attn_logit_softcapping", None) or 0.0)

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


def norm_into_residual(norm: nn.Module, hidden: torch.Tensor,
                       residual: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(norm(hidden + residual), hidden + residual); the first layer has no residual yet. The
    residual stream is carried separately so that each add fuses into the next norm."""
    if residual is None:
        return norm(hidden), hidden
    return norm(hidden, residual)


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config: PretrainedConfig, layer_id: int, rotary_emb: RotaryEmbedding,
                 options: LayerOptions, tp_rank: int, tp_size: int,
                 make_mlp: MLPFactory = dense_mlp) -> None:
        super().__init__()
        self.self_attn = LlamaAttention(config, layer_id, rotary_emb, options, tp_rank, tp_size)
        self.mlp = make_mlp(config, layer_id, options, tp_rank, tp_size)  # dense or MoE
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor,
                residual: torch.Tensor | None,
                batch: ForwardBatch) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, residual = norm_into_residual(self.input_layernorm, hidden, residual)
        hidden = self.self_attn(positions, hidden, batch)
        hidden, residual = self.post_attention_layernorm(hidden, residual)
        return self.mlp(hidden), residual


class LlamaModel(nn.Module):
    def __init__(self, config: PretrainedConfig, options: LayerOptions, tp_rank: int,
                 tp_size: int, make_mlp: MLPFactory = dense_mlp) -> None:
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size, tp_rank, tp_size)
        self.rotary_emb = get_rope(config, get_head_dim(config))
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(config, i, self.rotary_emb, options, tp_rank, tp_size, make_mlp)
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
        if quant_config is not None and not self.supports_fp8:
            raise ValueError(f"FP8 weights (--quantization fp8, or an FP8 checkpoint) are not "
                             f"supported for {type(self).__name__}: its MoE experts have no FP8 "
                             "path yet; serve it unquantized")
        # The decoder layers' linears take FP8 weights; embeddings and the LM head never do.
        options = dataclasses.replace(self.layer_options(config), quant=quant_config)
        self.model = self.build_model(config, options, tp_rank, tp_size)
        self.is_headless = False  # set by load_weights
        if self.tie_word_embeddings:
            self.lm_head = self.model.embed_tokens
        else:
            self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size, tp_rank, tp_size)

    @classmethod
    def layer_options(cls, config: PretrainedConfig) -> LayerOptions:
        attention_bias = bool(getattr(config, "attention_bias", False))
        return LayerOptions(qkv_bias=attention_bias, o_bias=attention_bias,
                            mlp_bias=bool(getattr(config, "mlp_bias", False)))

    # The MLP of each layer (MoE models return their sparse block on the layers that have one).
    make_mlp: MLPFactory = staticmethod(dense_mlp)
    # Whether every linear of the decoder layers can hold FP8 weights (not MoE experts yet).
    supports_fp8: bool = True

    def build_model(self, config: PretrainedConfig, options: LayerOptions, tp_rank: int,
                    tp_size: int) -> nn.Module:
        """The decoder stack under `self.model` (embed_tokens, layers, norm); `options` are
        layer_options(config) with the model's FP8 config."""
        return LlamaModel(config, options, tp_rank, tp_size, self.make_mlp)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                batch: ForwardBatch) -> torch.Tensor:
        """input_ids, positions: (T,) int64 -> final-normed hidden states (T, hidden)."""
        return self.model(input_ids, positions, batch)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(N, hidden) -> (N, vocab) float32."""
        return self.head().get_logits(hidden)

    def head(self) -> nn.Module:
        if self.is_headless and not self.tie_word_embeddings:
            raise ValueError("this checkpoint has no LM head (a sentence-embedding model saved "
                             "without it): serve it with --is-embedding")
        return self.lm_head

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load HF-named tensors, fusing q/k/v and gate/up into the merged parameters. Raises if
        any parameter is left unloaded, but for the LM head of a headless checkpoint (the
        decoder stack alone, its names without `model.`, as Qwen3-Embedding ships)."""
        self.is_headless = False
        load_params(dict(self.named_parameters()), self._checkpoint_names(weights),
                    optional=lambda name: self.is_headless and name.startswith("lm_head."))

    def _checkpoint_names(self, weights: Iterable[tuple[str, torch.Tensor]]) -> Iterable[tuple[str, torch.Tensor]]:
        for name, tensor in weights:
            if "rotary_emb.inv_freq" in name:
                continue
            if name.startswith(_STACK_NAMES):
                self.is_headless, name = True, "model." + name
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
