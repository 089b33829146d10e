"""EAGLE / EAGLE-3 draft heads: load a published head beside its target, or write a random one in
the published layout (tests, benchmarks)."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch
from safetensors.torch import save_file
from sgl.runtime.layers.rotary import rope_params_from_config
from sgl.runtime.loader import _DTYPES, _default_dtype, hf
from sgl.runtime.loader.dummy import DUMMY_INIT_STD
from sgl.runtime.models.llama import get_head_dim
from sgl.runtime.models.llama_eagle3 import eagle3_capture_layers
from sgl.runtime.models.registry import DRAFT_ARCHITECTURES, get_model_class
from torch import nn
from transformers import LlamaConfig, PretrainedConfig

# EAGLE-1/2 heads published with the target's architecture name in config.json (the yuhuili
# EAGLE-LLaMA checkpoints); as in SGLang, a draft path naming it means the EAGLE head.
_DRAFT_ALIASES = {"LlamaForCausalLM": "LlamaForCausalLMEagle"}
_KIND_ARCHITECTURES = {"EAGLE": "LlamaForCausalLMEagle", "EAGLE3": "LlamaForCausalLMEagle3"}


@dataclass
class DraftInfo:
    model: nn.Module
    hf_config: PretrainedConfig
    architecture: str
    num_layers: int  # 1: the KV pool the draft needs
    num_kv_heads: int  # per tensor-parallel rank
    head_dim: int
    vocab_size: int  # the draft vocabulary (logits width); map ids with model.draft_to_target
    target_layers_to_capture: tuple[int, ...]  # EAGLE-3: for the target's model.layers_to_capture


def load_draft_model(path: str, target_model: nn.Module, dtype: torch.dtype | str | None = None,
                     device: torch.device | str | None = None) -> DraftInfo:
    """Load the draft head at `path` (config.json + *.safetensors or pytorch_model*.bin) for
    `target_model` (a loaded LlamaForCausalLM-family model). dtype/device default to the
    target's. Does not touch the target: set `target_model.model.layers_to_capture =
    info.target_layers_to_capture` for EAGLE-3."""
    config = _load_draft_config(path)
    if getattr(config, "quantization_config", None):
        raise ValueError(f"{path}: quantized draft heads are not supported "
                         f"(quantization_config {config.quantization_config})")
    architecture = _draft_architecture(path, config)
    target_config = target_model.config
    _check_fits_target(path, config, target_config)
    # The draft follows the target's positions however long the target's context is.
    config.max_position_embeddings = max(config.max_position_embeddings,
                                         target_config.max_position_embeddings)
    like = target_model.model.embed_tokens.weight
    dtype = _resolve_dtype(dtype, like.dtype)
    with _default_dtype(dtype), torch.device(device or like.device):
        model = get_model_class(architecture)(config)
    model.load_weights(hf.iterate_hf_weights(path))
    model.share_target(target_model)
    model.eval()
    capture = (eagle3_capture_layers(config, target_config.num_hidden_layers)
               if model.is_eagle3 else [])
    return DraftInfo(model=model, hf_config=config, architecture=architecture, num_layers=1,
                     num_kv_heads=model.num_kv_heads, head_dim=model.head_dim,
                     vocab_size=getattr(model, "draft_vocab_size", config.vocab_size),
                     target_layers_to_capture=tuple(capture))


def _load_draft_config(path: str) -> PretrainedConfig:
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"draft model path {path} has no config.json")
    # Published heads are Llama-shaped whatever their model_type (some EAGLE-3 configs have none).
    return LlamaConfig.from_pretrained(path)


def _draft_architecture(path: str, config: PretrainedConfig) -> str:
    architectures = getattr(config, "architectures", None) or []
    architecture = _DRAFT_ALIASES.get(architectures[0], architectures[0]) if architectures else None
    if architecture not in DRAFT_ARCHITECTURES:
        raise ValueError(f"{path}: unsupported draft architecture {architecture!r}; supported: "
                         f"{', '.join(DRAFT_ARCHITECTURES)} (and LlamaForCausalLM for EAGLE-1 heads)")
    return architecture


def _check_fits_target(path: str, config: PretrainedConfig, target_config: PretrainedConfig) -> None:
    for field in ("hidden_size", "vocab_size"):
        draft_value, target_value = getattr(config, field), getattr(target_config, field)
        if draft_value != target_value:
            raise ValueError(f"{path}: draft head {field} {draft_value} differs from the target's "
                             f"{target_value}: it was trained for another model")


def _resolve_dtype(dtype: torch.dtype | str | None, target_dtype: torch.dtype) -> torch.dtype:
    if dtype is None or dtype == "auto":
        return target_dtype
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; supported: auto, {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


# -- random heads --------------------------------------------------------------------------------
def write_random_eagle_head(target_config: PretrainedConfig, path: str, kind: str, seed: int = 0,
                            draft_vocab_size: int | None = None, with_embed: bool = False,
                            weights_format: str | None = None, name_prefix: str = "",
                            aux_layer_ids: list[int] | None = None) -> None:
    """Write a random EAGLE ("EAGLE") or EAGLE-3 ("EAGLE3") head for `target_config` to the folder
    `path`, in the published layout: config.json and tensor names as the released heads have
    them. Weights N(0, 0.02) (HF init), norms 1, biases 0. EAGLE-3: the draft vocabulary is a
    sorted random subset of `draft_vocab_size` target ids (default: all of them), with d2t/t2d.
    weights_format: "bin" (pytorch_model.bin, default for EAGLE, as published) or "safetensors"
    (default for EAGLE3); name_prefix: e.g. "model." to write prefixed names; aux_layer_ids:
    EAGLE-3 `eagle_config.eagle_aux_hidden_state_layer_ids` (target layer outputs; default: none
    written, i.e. SGLang's default layers)."""
    if kind not in _KIND_ARCHITECTURES:
        raise ValueError(f"unknown draft head kind {kind!r}; supported: {', '.join(_KIND_ARCHITECTURES)}")
    weights_format = weights_format or ("bin" if kind == "EAGLE" else "safetensors")
    if weights_format not in ("bin", "safetensors"):
        raise ValueError(f"unknown weights_format {weights_format!r}; supported: bin, safetensors")
    vocab = target_config.vocab_size
    draft_vocab = draft_vocab_size or vocab
    if kind == "EAGLE" and draft_vocab != vocab:
        raise ValueError("EAGLE-1 heads draft over the target's whole vocabulary")
    config = eagle_head_config(target_config, kind, draft_vocab)
    if aux_layer_ids is not None:
        config["eagle_config"] = {"eagle_aux_hidden_state_layer_ids": list(aux_layer_ids),
                                  "use_aux_hidden_state": True}
    generator = torch.Generator().manual_seed(seed)
    tensors = _random_head_tensors(config, kind, generator, with_embed)
    if kind == "EAGLE3":
        tensors.update(_random_vocab_map(vocab, draft_vocab, generator))
    tensors = {name_prefix + name: t for name, t in tensors.items()}
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    if weights_format == "bin":
        torch.save(tensors, os.path.join(path, "pytorch_model.bin"))
    else:
        save_file(tensors, os.path.join(path, "model.safetensors"))


def eagle_head_config(target_config: PretrainedConfig, kind: str, draft_vocab: int) -> dict:
    """config.json of an EAGLE ("EAGLE") or EAGLE-3 ("EAGLE3") head for `target_config`, as the
    published heads write it (random heads here, trained ones in train_eagle3.py)."""
    theta, rope_scaling = rope_params_from_config(target_config)
    config = {
        "architectures": [_KIND_ARCHITECTURES[kind]], "model_type": "llama",
        "hidden_size": target_config.hidden_size,
        "intermediate_size": target_config.intermediate_size,
        "num_attention_heads": target_config.num_attention_heads,
        "num_key_value_heads": target_config.num_key_value_heads,
        "head_dim": get_head_dim(target_config), "num_hidden_layers": 1,
        "vocab_size": target_config.vocab_size,
        "max_position_embeddings": target_config.max_position_embeddings,
        "rms_norm_eps": target_config.rms_norm_eps, "rope_theta": theta,
        "rope_scaling": rope_scaling, "hidden_act": "silu", "tie_word_embeddings": False,
        "torch_dtype": "float32",
    }
    if kind == "EAGLE":
        config["bias"] = True  # fc has a bias in EAGLE-1/2 heads
    else:
        config["draft_vocab_size"] = draft_vocab
    return config


def _random_head_tensors(config: dict, kind: str, generator: torch.Generator,
                         with_embed: bool) -> dict[str, torch.Tensor]:
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    head_dim = config["head_dim"]
    q_size = config["num_attention_heads"] * head_dim
    kv_size = config["num_key_value_heads"] * head_dim
    attn_in = hidden if kind == "EAGLE" else 2 * hidden
    layer = "layers.0." if kind == "EAGLE" else "midlayer."
    shapes = {
        f"{layer}self_attn.q_proj.weight": (q_size, attn_in),
        f"{layer}self_attn.k_proj.weight": (kv_size, attn_in),
        f"{layer}self_attn.v_proj.weight": (kv_size, attn_in),
        f"{layer}self_attn.o_proj.weight": (hidden, q_size),
        f"{layer}mlp.gate_proj.weight": (inter, hidden),
        f"{layer}mlp.up_proj.weight": (inter, hidden),
        f"{layer}mlp.down_proj.weight": (hidden, inter),
    }
    norms = [f"{layer}post_attention_layernorm.weight"]
    if kind == "EAGLE":
        shapes["fc.weight"] = (hidden, 2 * hidden)
    else:
        shapes["fc.weight"] = (hidden, 3 * hidden)
        shapes["lm_head.weight"] = (config["draft_vocab_size"], hidden)
        norms += [f"{layer}input_layernorm.weight", f"{layer}hidden_norm.weight", "norm.weight"]
    if with_embed:
        shapes["embed_tokens.weight"] = (config["vocab_size"], hidden)
    tensors = {name: torch.randn(shape, generator=generator) * DUMMY_INIT_STD
               for name, shape in shapes.items()}
    tensors.update({name: torch.ones(hidden) for name in norms})
    if kind == "EAGLE":
        tensors["fc.bias"] = torch.zeros(hidden)
    return tensors


def _random_vocab_map(vocab: int, draft_vocab: int,
                      generator: torch.Generator) -> dict[str, torch.Tensor]:
    """d2t (draft_vocab,) int64: target id - draft id; t2d (vocab,) bool: in the draft vocab.
    Draft ids follow ascending target ids, as the EAGLE-3 training scripts build them."""
    if draft_vocab == vocab:
        target_ids = torch.arange(vocab)
    else:
        target_ids = torch.randperm(vocab, generator=generator)[:draft_vocab].sort().values
    t2d = torch.zeros(vocab, dtype=torch.bool)
    t2d[target_ids] = True
    return {"d2t": target_ids - torch.arange(draft_vocab), "t2d": t2d}
