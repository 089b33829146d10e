"""FP8 weights and FP8 KV cache on the CPU reference paths: loading (quantize at load, the
shipped FP8 checkpoint, published layouts, refusals), against transformers running the same
FP8 arithmetic, and teacher-forced against the unquantized model."""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from sgl.runtime.cache.memory_pool import MHATokenToKVPool
from sgl.runtime.config import ServerArgs
from sgl.runtime.loader import load_model
from sgl.runtime.loader.quantize import write_fp8_checkpoint
from tests.runtime.test_models import _check_against_hf

DATA = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data")
TINY = os.path.join(DATA, "tiny-llama")          # random bf16 weights
TINY_FP8 = os.path.join(DATA, "tiny-llama-fp8")  # that model through python -m sgl.quantize_fp8
E4M3_MAX = 448.0


def _fake_fp8(x: torch.Tensor, scale: torch.Tensor | float | None = None) -> torch.Tensor:
    """x rounded through float8_e4m3fn: by `scale`, else by a symmetric scale per row (written
    here again, apart from sgl.kernels.fp8, as the test's own arithmetic)."""
    if scale is None:
        scale = (x.abs().amax(dim=-1, keepdim=True) / E4M3_MAX).clamp(min=1e-12)
    return (x / scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn).float() * scale


def _fp8_transformers(path: str, per_tensor: bool = False,
                      static_scale: Callable[[str], float] | None = None):
    """transformers' float32 model of `path` doing FP8 arithmetic in its decoder linears:
    weights rounded per output channel (or per tensor), inputs per token (or by the static
    scale of the linear's name)."""
    model = transformers.LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return fake_fp8_linears(model, per_tensor, static_scale)


def fake_fp8_linears(model: torch.nn.Module, per_tensor: bool = False,
                     static_scale: Callable[[str], float] | None = None) -> torch.nn.Module:
    """`model` (transformers, float32) with FP8 arithmetic in every linear but the LM head."""
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name != "lm_head":
            w = module.weight.data
            module.weight.data = _fake_fp8(w, w.abs().max() / E4M3_MAX if per_tensor else None)
            scale = static_scale(name) if static_scale else None
            module.register_forward_pre_hook(lambda m, args, s=scale: (_fake_fp8(args[0], s),))
    return model


def _linears(loaded) -> dict[str, torch.nn.Module]:
    from sgl.runtime.layers.linear import ParallelLinear
    return {n: m for n, m in loaded.model.named_modules() if isinstance(m, ParallelLinear)}


def test_server_args_check_fp8_flags():
    assert ServerArgs(quantization="fp8", kv_cache_dtype="fp8_e5m2").kv_cache_dtype == "fp8_e5m2"
    with pytest.raises(ValueError, match="quantization"):
        ServerArgs(quantization="awq")
    with pytest.raises(ValueError, match="kv_cache_dtype"):
        ServerArgs(kv_cache_dtype="fp8")


def test_quantize_at_load_matches_transformers_doing_fp8():
    loaded = load_model(TINY, dtype=torch.float32, quantization="fp8")
    linears = _linears(loaded)
    assert len(linears) == 8 and all(m.weight.dtype == torch.float8_e4m3fn for m in linears.values())
    assert loaded.model.lm_head.weight.dtype == torch.float32  # embeddings and LM head stay
    _check_against_hf(loaded, _fp8_transformers(TINY), atol=2e-2, rtol=1e-3)  # rare FP8 rounding flips


def test_shipped_fp8_checkpoint_is_what_quantize_at_load_gives():
    """tests/data/tiny-llama-fp8 (compressed-tensors, per-channel scales) loads as published,
    with the same FP8 bytes and scales as quantizing its source at load."""
    published = load_model(TINY_FP8, dtype=torch.float32)
    assert published.quant_config is not None and published.quant_config.checkpoint_is_fp8
    at_load = load_model(TINY, dtype=torch.float32, quantization="fp8")
    for (name, a), b in zip(_linears(published).items(), _linears(at_load).values()):
        assert torch.equal(a.weight.view(torch.uint8), b.weight.view(torch.uint8)), name
        torch.testing.assert_close(a.weight_scale, b.weight_scale, rtol=0, atol=0)
    _check_against_hf(published, _fp8_transformers(TINY), atol=2e-2, rtol=1e-3)  # rare FP8 rounding flips


def test_quant_method_fp8_layout_with_static_and_kv_scales(tmp_path):
    """quant_method fp8 (per-tensor weight scales, our tool's --format fp8) with static
    activation scales and per-layer KV cache scales added as published checkpoints carry them."""
    write_fp8_checkpoint(TINY, str(tmp_path), fmt="fp8")
    tensors = load_file(tmp_path / "model.safetensors")
    assert tensors["model.layers.0.mlp.up_proj.weight_scale"].shape == ()
    for name in [n for n in tensors if n.endswith(".weight_scale")]:
        prefix = name.removesuffix(".weight_scale")
        tensors[prefix + ".input_scale"] = torch.tensor(0.01 if "k_proj" in name else 0.008)
    for layer in range(2):
        tensors[f"model.layers.{layer}.self_attn.k_scale"] = torch.tensor(0.03 * (layer + 1))
        tensors[f"model.layers.{layer}.self_attn.v_scale"] = torch.tensor(0.02)
    save_file(tensors, tmp_path / "model.safetensors")
    config = json.loads((tmp_path / "config.json").read_text())
    config["quantization_config"]["activation_scheme"] = "static"
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = load_model(str(tmp_path), dtype=torch.float32)
    qkv = _linears(loaded)["model.layers.0.self_attn.qkv_proj"]
    assert qkv.input_scale.item() == pytest.approx(0.01)  # the largest of q, k and v's
    assert qkv.weight_scale.unique().numel() == 3  # a per-tensor scale fills each shard's rows
    attn = loaded.model.model.layers[1].self_attn.attn
    assert (attn.k_scale, attn.v_scale) == (pytest.approx(0.06), pytest.approx(0.02))
    hf = _fp8_transformers(TINY, per_tensor=True,
                           static_scale=lambda name: 0.01 if "_proj" in name and name[-6] in "qkv" else 0.008)
    _check_against_hf(loaded, hf, atol=2e-2, rtol=1e-3)


def test_ignored_layers_load_unquantized(tmp_path):
    write_fp8_checkpoint(TINY, str(tmp_path))
    tensors = load_file(tmp_path / "model.safetensors")
    source = load_file(os.path.join(TINY, "model.safetensors"))
    for piece in ("gate_proj", "up_proj", "down_proj"):
        name = f"model.layers.1.mlp.{piece}"
        tensors[name + ".weight"] = source[name + ".weight"]
        del tensors[name + ".weight_scale"]
    save_file(tensors, tmp_path / "model.safetensors")
    config = json.loads((tmp_path / "config.json").read_text())
    config["quantization_config"]["ignore"] += ["re:.*layers\\.1\\.mlp\\..*"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    linears = _linears(load_model(str(tmp_path), dtype=torch.float32))
    assert linears["model.layers.1.mlp.gate_up_proj"].weight.dtype == torch.float32
    assert linears["model.layers.1.mlp.down_proj"].quant is None
    assert linears["model.layers.0.mlp.down_proj"].weight.dtype == torch.float8_e4m3fn
    config["quantization_config"]["ignore"] = ["lm_head", "model.layers.1.mlp.up_proj"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="gate_up_proj"):  # half a fused layer
        load_model(str(tmp_path))


def _with_config(tmp_path, source: str, quantization_config: dict | None) -> str:
    """A copy of `source` whose config.json carries this quantization_config (or none)."""
    shutil.copytree(source, tmp_path, dirs_exist_ok=True)
    config = json.loads((tmp_path / "config.json").read_text())
    config.pop("quantization_config", None)
    if quantization_config is not None:
        config["quantization_config"] = quantization_config
    (tmp_path / "config.json").write_text(json.dumps(config))
    return str(tmp_path)


@pytest.mark.parametrize("config,named", [
    ({"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True}, "'awq'"),
    ({"quant_method": "gptq", "bits": 4, "group_size": 128}, "'gptq'"),
    ({"quant_method": "bitsandbytes", "load_in_4bit": True}, "'bitsandbytes'"),
    ({"quant_method": "fp8", "activation_scheme": "dynamic", "weight_block_size": [128, 128]},
     "weight_block_size"),
    ({"quant_method": "compressed-tensors", "format": "pack-quantized", "config_groups": {}},
     "'pack-quantized'"),
    ({"quant_method": "compressed-tensors", "format": "float-quantized", "config_groups": {"g": {
        "weights": {"num_bits": 8, "type": "float", "strategy": "block"}}}}, "'block'"),
    ({"quant_method": "compressed-tensors", "format": "float-quantized", "config_groups": {"g": {
        "weights": {"num_bits": 8, "type": "int", "strategy": "channel"}}}}, "8-bit int"),
])
def test_unsupported_quantization_is_a_value_error_naming_it(tmp_path, config, named):
    path = _with_config(tmp_path, TINY, config)
    with pytest.raises(ValueError, match=named):
        load_model(path)


def test_fp8_tensors_without_quantization_config_are_refused(tmp_path):
    """FP8 weights into 16/32-bit parameters would drop their scales: a silently wrong model."""
    path = _with_config(tmp_path, TINY_FP8, None)
    with pytest.raises(ValueError, match="quantization_config"):
        load_model(path)


@pytest.mark.parametrize("kv_dtype,rel", [(torch.float8_e4m3fn, 2 ** -4), (torch.float8_e5m2, 2 ** -3)])
def test_fp8_kv_pool_round_trips_and_holds_twice_bf16s_tokens(kv_dtype, rel):
    pool = MHATokenToKVPool(64, 2, 16, 3, kv_dtype, "cpu")
    assert pool.is_fp8 and 2 * pool.bytes_per_token() == MHATokenToKVPool(
        64, 2, 16, 3, torch.bfloat16, "meta").bytes_per_token()
    pool.set_scales([0.01, 0.1, 1.0], [0.5, 0.05, 0.005])
    g = torch.Generator().manual_seed(0)
    loc = torch.randperm(64, generator=g)[:10] + 1
    for layer in range(3):
        k, v = torch.randn(10, 2, 16, generator=g), torch.randn(10, 2, 16, generator=g) * 0.1
        pool.set_kv(layer, loc, k, v)
        k_scale, v_scale = pool.get_scales(layer)
        k_buf, v_buf = pool.get_kv(layer)
        assert k_buf.dtype == kv_dtype
        k_back, v_back = k_buf[loc].float() * k_scale, v_buf[loc].float() * v_scale
        # within the format's rounding where the scaled value is normal; below, its step
        tiny = torch.finfo(kv_dtype).tiny
        assert ((k_back - k).abs() <= rel * k.abs() + tiny * k_scale).all()
        assert ((v_back - v).abs() <= rel * v.abs() + tiny * v_scale).all()
    with pytest.raises(ValueError, match="positive"):
        pool.set_scales([1.0, 0.0, 1.0], [1.0] * 3)


def test_teacher_forced_agreement_on_the_tiny_model(tmp_path):
    """The accuracy script on tests/data/tiny-llama (random weights: flat next-token
    distributions, where FP8 noise flips more top-1 choices than in a trained model; measured
    78% / 89% on 4,080 positions, docs/benchmarks.md), and the engine runs FP8 KV with the
    checkpoint's scales."""
    from sgl.bench_fp8_accuracy import main
    rows = main(["--model-path", TINY, "--random-tokens", "256", "--num-windows", "4",
                 "--window-len", "128", "--variants", "fp8_weights,fp8_kv,fp8_both",
                 "--result-filename", str(tmp_path / "acc.jsonl")])
    got = {r["variant"]: r for r in rows}
    assert got["fp8_weights"]["top1_agreement"] > 0.7 and got["fp8_kv"]["top1_agreement"] > 0.8
    assert 0 < got["fp8_kv"]["mean_abs_logprob_diff"] < got["fp8_both"]["mean_abs_logprob_diff"] < 0.25
    assert len((tmp_path / "acc.jsonl").read_text().splitlines()) == 3


def test_engine_uses_the_checkpoints_kv_scales(tmp_path):
    from sgl.runtime.executor.model_runner import ModelRunner
    shutil.copytree(TINY_FP8, tmp_path, dirs_exist_ok=True)
    tensors = load_file(tmp_path / "model.safetensors")
    tensors["model.layers.1.self_attn.kv_scale"] = torch.tensor(0.25)  # AutoFP8's one for both
    save_file(tensors, tmp_path / "model.safetensors")
    runner = ModelRunner(ServerArgs(model_path=str(tmp_path), kv_cache_dtype="fp8_e4m3",
                                    skip_tokenizer_init=True, max_total_tokens=256))
    assert runner.kv_pool.dtype == torch.float8_e4m3fn
    assert runner.kv_pool.k_scales == [1.0, 0.25] and runner.kv_pool.v_scales == [1.0, 0.25]
