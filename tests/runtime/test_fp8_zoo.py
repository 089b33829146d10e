"""FP8 weights on the model zoo's dense architectures (Gemma 2/3, Phi-3, Mistral's window):
quantized at load, against transformers doing the same FP8 arithmetic; Phi-3's fused q|k|v and
gate|up published with per-tensor scales; our FP8 checkpoint tool on Gemma 3 (two ropes); and
the refusal for MoE experts, which have no FP8 path."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from sgl.runtime.loader import load_model
from sgl.runtime.loader.quantize import write_fp8_checkpoint
from tests.runtime.test_fp8 import E4M3_MAX, _linears, fake_fp8_linears
from tests.runtime.test_model_zoo import CONFIGS, make_hf_model
from tests.runtime.test_models import _check_against_hf


def _saved(name: str, path) -> torch.nn.Module:
    hf_model = make_hf_model(CONFIGS[name]())
    hf_model.save_pretrained(path)
    return hf_model


@pytest.mark.parametrize("name", ["gemma2", "gemma3", "phi3_longrope_partial", "mistral_window"])
def test_quantize_at_load_matches_transformers_doing_fp8(name, tmp_path):
    hf_model = _saved(name, tmp_path)
    loaded = load_model(str(tmp_path), quantization="fp8")
    linears = _linears(loaded)
    assert len(linears) == 4 * loaded.num_layers
    assert all(m.weight.dtype == torch.float8_e4m3fn for m in linears.values())
    _check_against_hf(loaded, fake_fp8_linears(hf_model), atol=3e-2, rtol=1e-3)  # rare FP8 flips


def test_phi3_fused_checkpoint_with_per_tensor_scales(tmp_path):
    """A published FP8 Phi-3 keeps qkv_proj and gate_up_proj fused, one weight_scale each: the
    scale covers every piece we cut the fused tensor into."""
    hf_model = _saved("phi3", tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    for name in [n for n in tensors if n.startswith("model.layers.") and n.endswith("proj.weight")]:
        weight = tensors[name]
        scale = weight.abs().max() / E4M3_MAX
        tensors[name] = (weight / scale).to(torch.float8_e4m3fn)
        tensors[name.removesuffix("weight") + "weight_scale"] = scale.reshape(())
    assert "model.layers.0.self_attn.qkv_proj.weight_scale" in tensors
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((tmp_path / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "fp8", "activation_scheme": "dynamic"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = load_model(str(tmp_path))
    assert loaded.quant_config is not None and loaded.quant_config.checkpoint_is_fp8
    _check_against_hf(loaded, fake_fp8_linears(hf_model, per_tensor=True), atol=3e-2, rtol=1e-3)


def test_quantize_tool_on_gemma3_loads_back_as_quantized_at_load(tmp_path):
    _saved("gemma3", tmp_path / "src")
    write_fp8_checkpoint(str(tmp_path / "src"), str(tmp_path / "fp8"), dtype=torch.float32)
    assert "rope_freqs.weight" not in load_file(tmp_path / "fp8" / "model.safetensors")
    published = load_model(str(tmp_path / "fp8"))
    at_load = load_model(str(tmp_path / "src"), quantization="fp8")
    for (name, a), b in zip(_linears(published).items(), _linears(at_load).values()):
        assert torch.equal(a.weight.view(torch.uint8), b.weight.view(torch.uint8)), name
    for rope_a, rope_b in zip(published.model.model.rotary_embs.values(),
                              at_load.model.model.rotary_embs.values()):
        torch.testing.assert_close(rope_a.cos_sin_cache, rope_b.cos_sin_cache)


@pytest.mark.parametrize("name", ["mixtral", "qwen3_moe"])
def test_fp8_moe_experts_are_refused_naming_flag_and_architecture(name, tmp_path):
    hf_model = _saved(name, tmp_path)
    arch = type(hf_model).__name__
    with pytest.raises(ValueError, match=rf"--quantization fp8.*{arch}"):
        load_model(str(tmp_path), quantization="fp8")
    with pytest.raises(ValueError, match=arch):
        write_fp8_checkpoint(str(tmp_path), str(tmp_path / "fp8"))
