"""HF architecture name -> model class."""
from __future__ import annotations

from sgl.runtime.models.gemma2 import Gemma2ForCausalLM, Gemma3ForCausalLM
from sgl.runtime.models.llama import LlamaForCausalLM
from sgl.runtime.models.llama_eagle import LlamaForCausalLMEagle
from sgl.runtime.models.llama_eagle3 import LlamaForCausalLMEagle3
from sgl.runtime.models.mixtral import MixtralForCausalLM
from sgl.runtime.models.phi3 import Phi3ForCausalLM
from sgl.runtime.models.qwen2 import Qwen2ForCausalLM
from sgl.runtime.models.qwen2_moe import Qwen2MoeForCausalLM
from sgl.runtime.models.qwen3 import Qwen3ForCausalLM
from sgl.runtime.models.qwen3_moe import Qwen3MoeForCausalLM
from torch import nn

_MODELS: dict[str, type[nn.Module]] = {
    "LlamaForCausalLM": LlamaForCausalLM,
    "MistralForCausalLM": LlamaForCausalLM,
    "Qwen2ForCausalLM": Qwen2ForCausalLM,
    "Qwen3ForCausalLM": Qwen3ForCausalLM,
    "MixtralForCausalLM": MixtralForCausalLM,
    "Qwen2MoeForCausalLM": Qwen2MoeForCausalLM,
    "Qwen3MoeForCausalLM": Qwen3MoeForCausalLM,
    "Gemma2ForCausalLM": Gemma2ForCausalLM,
    "Gemma3ForCausalLM": Gemma3ForCausalLM,
    "Phi3ForCausalLM": Phi3ForCausalLM,
    # Speculative-decoding draft heads (load them with loader/draft.py, beside their target).
    "LlamaForCausalLMEagle": LlamaForCausalLMEagle,
    "LlamaForCausalLMEagle3": LlamaForCausalLMEagle3,
    "Eagle3LlamaForCausalLM": LlamaForCausalLMEagle3,
}

# Heads that draft for a target: never loaded on their own.
DRAFT_ARCHITECTURES = ("LlamaForCausalLMEagle", "LlamaForCausalLMEagle3", "Eagle3LlamaForCausalLM")

# config.model_type -> architecture, for configs that do not list `architectures` (GGUF, dummy).
_MODEL_TYPES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
                "mixtral": "MixtralForCausalLM", "qwen2_moe": "Qwen2MoeForCausalLM",
                "qwen3_moe": "Qwen3MoeForCausalLM", "gemma2": "Gemma2ForCausalLM",
                "gemma3_text": "Gemma3ForCausalLM", "phi3": "Phi3ForCausalLM"}


def supported_architectures() -> list[str]:
    return sorted(_MODELS)


def get_model_class(architecture: str) -> type[nn.Module]:
    if architecture not in _MODELS:
        raise ValueError(f"unsupported architecture {architecture}; supported: "
                         f"{', '.join(supported_architectures())}")
    return _MODELS[architecture]


def resolve_architecture(config) -> str:
    """The architecture a HF config asks for: its first `architectures` entry, else derived from
    `model_type`."""
    architectures = getattr(config, "architectures", None) or []
    if architectures:
        return architectures[0]
    model_type = getattr(config, "model_type", "")
    if model_type in _MODEL_TYPES:
        return _MODEL_TYPES[model_type]
    raise ValueError(f"unsupported model_type {model_type!r} (config has no architectures); "
                     f"supported: {', '.join(supported_architectures())}")
