"""Our models, fed through the real KV pool and torch attention backend over a ragged batch with
a cached prefix, against transformers' float32 logits of the same weights."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from sgl.runtime.loader import LoadedModel, bundled_model_path, load_model
from sgl.runtime.loader.gguf_loader import dequantize_tensor
from sgl.runtime.loader.tokenizer import get_tokenizer
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config, Qwen3Config

from tests.runtime.pools import Pools

TINY = {"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 128, "max_position_embeddings": 256,
        "rms_norm_eps": 1e-6}

CONFIGS = {
    "llama": lambda: LlamaConfig(**TINY),
    "llama3_rope_bias": lambda: LlamaConfig(**TINY, attention_bias=True, mlp_bias=True, rope_theta=500000.0,
                                            rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                                          "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                          "original_max_position_embeddings": 32}),
    "llama_tied_linear_rope": lambda: LlamaConfig(**{**TINY, "num_key_value_heads": 4}, tie_word_embeddings=True,
                                                  rope_scaling={"rope_type": "linear", "factor": 2.0}),
    "qwen2": lambda: Qwen2Config(**TINY, tie_word_embeddings=False),
    "qwen3": lambda: Qwen3Config(**TINY, head_dim=32, tie_word_embeddings=False),
}


def _make_hf_model(config, seed: int = 0):
    """A transformers model with weights big enough (and norms/biases far enough from 1/0) that
    any wiring mistake moves the logits well past the tolerance."""
    torch.manual_seed(seed)
    config.architectures = [{"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
                             "qwen3": "Qwen3ForCausalLM"}[config.model_type]]
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="eager")
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(1.0 + 0.3 * torch.randn_like(param))
            else:
                param.copy_(0.15 * torch.randn_like(param))
    return model.eval()


def _hf_logits(hf_model, tokens: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return hf_model(torch.tensor([tokens])).logits[0].float()  # (len, vocab)


class Runner:
    """The model over test pools: each step's logits of the new tokens."""

    def __init__(self, loaded: LoadedModel, num_slots: int = 96, seed: int = 0) -> None:
        self.loaded = loaded
        self.pools = Pools(loaded.num_kv_heads, loaded.head_dim, loaded.num_layers, num_slots,
                           seed, loaded.dtype)

    def step(self, chunks: dict[int, list[int]]) -> list[torch.Tensor]:
        """chunks: request row -> new tokens. Returns each request's logits of its new tokens."""
        batch = self.pools.batch(chunks)
        input_ids, extend_lens = batch.input_ids, batch.extend_lens_cpu
        model = self.loaded.model
        with torch.no_grad():
            hidden = model.forward(batch.input_ids, batch.positions, batch)
            logits = model.compute_logits(hidden[batch.logits_indices])
        assert logits.dtype == torch.float32 and logits.shape == (len(input_ids), self.loaded.vocab_size)
        return list(logits.split(extend_lens))


def _check_against_hf(loaded: LoadedModel, hf_model, atol: float, rtol: float = 1e-4) -> None:
    g = torch.Generator().manual_seed(1)
    vocab = loaded.vocab_size
    seq_a, seq_b = torch.randint(vocab, (10,), generator=g).tolist(), torch.randint(vocab, (8,), generator=g).tolist()
    ref_a, ref_b = _hf_logits(hf_model, seq_a), _hf_logits(hf_model, seq_b)
    runner = Runner(loaded)
    # Step 1: request A's first 5 tokens, alone; its KV stays in the pool as a cached prefix.
    (a1,) = runner.step({2: seq_a[:5]})
    # Step 2: ragged: A continues over its prefix, B starts fresh.
    a2, b2 = runner.step({2: seq_a[5:9], 0: seq_b[:7]})
    # Step 3: one decode token each.
    a3, b3 = runner.step({2: seq_a[9:], 0: seq_b[7:]})
    ours = [(a1, ref_a[:5]), (a2, ref_a[5:9]), (b2, ref_b[:7]), (a3, ref_a[9:]), (b3, ref_b[7:])]
    for got, expected in ours:
        assert expected.abs().max() > 0.5  # the comparison must not be between near-zero logits
        torch.testing.assert_close(got, expected, atol=atol, rtol=rtol)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_model_matches_transformers(name, tmp_path):
    hf_model = _make_hf_model(CONFIGS[name]())
    hf_model.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path))
    assert loaded.architecture == hf_model.config.architectures[0]
    assert loaded.hf_config.tie_word_embeddings == (name == "llama_tied_linear_rope")
    _check_against_hf(loaded, hf_model, atol=1e-4)


def test_sharded_safetensors(tmp_path):
    hf_model = _make_hf_model(CONFIGS["llama"](), seed=3)
    hf_model.save_pretrained(tmp_path, max_shard_size="60KB")
    shards = [f for f in os.listdir(tmp_path) if f.endswith(".safetensors")]
    assert len(shards) >= 2 and os.path.isfile(tmp_path / "model.safetensors.index.json")
    _check_against_hf(load_model(str(tmp_path)), hf_model, atol=1e-4)


def test_missing_weight_is_an_error(tmp_path):
    from safetensors.torch import load_file, save_file
    hf_model = _make_hf_model(CONFIGS["llama"]())
    hf_model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    del weights["model.layers.1.mlp.up_proj.weight"]
    save_file(weights, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="gate_up_proj"):
        load_model(str(tmp_path))


def _write_config(path, **overrides) -> None:
    path.mkdir(parents=True, exist_ok=True)
    config = CONFIGS["llama"]().to_dict()
    config.update({"architectures": ["LlamaForCausalLM"], **overrides})
    (path / "config.json").write_text(json.dumps(config))


def test_dummy_weights_are_deterministic_and_sane(tmp_path):
    _write_config(tmp_path)
    first = load_model(str(tmp_path), load_format="dummy", seed=7)
    again = load_model(str(tmp_path), load_format="dummy", seed=7)
    other = load_model(str(tmp_path / "config.json"), load_format="dummy", seed=8)
    w = lambda m: m.model.model.layers[0].self_attn.qkv_proj.weight
    assert torch.equal(w(first), w(again)) and not torch.equal(w(first), w(other))
    assert torch.equal(first.model.model.norm.weight, torch.ones(64))
    (logits,) = Runner(first).step({0: [1, 5, 9, 3]})
    assert torch.isfinite(logits).all() and 0 < logits.std() < 10


def test_dummy_bfloat16_and_shipped_config(tmp_path):
    _write_config(tmp_path)
    loaded = load_model(str(tmp_path), load_format="dummy", dtype="bfloat16")
    assert loaded.dtype == torch.bfloat16
    assert loaded.model.model.layers[0].mlp.gate_up_proj.weight.dtype == torch.bfloat16
    (logits,) = Runner(loaded).step({1: [4, 2, 8]})
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    from sgl.runtime.loader import _load_config, resolve_model_path  # the 8B config, without its 16 GB
    config, _ = _load_config(resolve_model_path("llama-3.1-8b-dummy"), "dummy")
    assert (config.hidden_size, config.num_hidden_layers, config.num_key_value_heads) == (4096, 32, 8)
    assert config.vocab_size == 128256 and config.tie_word_embeddings is False


def test_unsupported_architecture_error(tmp_path):
    _write_config(tmp_path, architectures=["GPT2LMHeadModel"])
    with pytest.raises(ValueError, match="unsupported architecture GPT2LMHeadModel; supported: .*LlamaForCausalLM"):
        load_model(str(tmp_path), load_format="dummy")


def test_unsupported_quant_type_error(tmp_path):
    import gguf
    path = str(tmp_path / "tiny.gguf")
    writer = gguf.GGUFWriter(path, "llama")
    for key, value in [("block_count", 1), ("context_length", 64), ("embedding_length", 256),
                       ("feed_forward_length", 512), ("attention.head_count", 4)]:
        writer.add_uint32(f"llama.{key}", value)
    writer.add_tensor("token_embd.weight", np.ones((16, 256), dtype=np.float32))
    iq2_bytes = np.ones((256, 66), dtype=np.uint8)  # one IQ2_XXS block (256 values) per row
    writer.add_tensor("blk.0.attn_q.weight", iq2_bytes, raw_dtype=gguf.GGMLQuantizationType.IQ2_XXS)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ValueError, match="'blk.0.attn_q.weight' has unsupported quantization type IQ2_XXS"):
        load_model(path)
    with pytest.raises(ValueError, match="IQ2_XXS"):
        dequantize_tensor("x", iq2_bytes, gguf.GGMLQuantizationType.IQ2_XXS)


def test_tokenizer_missing_is_clear(tmp_path):
    _write_config(tmp_path)
    with pytest.raises(ValueError, match="no tokenizer found"):
        get_tokenizer(str(tmp_path))


# ---- the bundled GGUF model -----------------------------------------------------------------

@pytest.fixture(scope="module")
def bundled():
    path = bundled_model_path()
    return path, load_model(path)


def test_bundled_gguf_matches_transformers(bundled, bundled_hf):
    path, loaded = bundled
    assert loaded.architecture == "LlamaForCausalLM" and loaded.hf_config.tie_word_embeddings
    assert (loaded.num_layers, loaded.num_kv_heads, loaded.head_dim, loaded.context_len) == (30, 3, 64, 8192)
    tokenizer = get_tokenizer(path)
    assert get_tokenizer(path) is tokenizer  # cached per path
    assert loaded.eos_token_ids == [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is 2+2?"}],
                                           tokenize=False, add_generation_prompt=True)
    assert prompt.startswith("<|im_start|>system") and prompt.endswith("<|im_start|>assistant\n")
    tokens = tokenizer("The capital of France is")["input_ids"]
    ref = _hf_logits(bundled_hf[0], tokens)
    runner = Runner(loaded)
    (first,) = runner.step({0: tokens[:3]})
    (rest,) = runner.step({0: tokens[3:]})
    torch.testing.assert_close(torch.cat([first, rest]), ref, atol=2e-4, rtol=1e-5)
    assert tokenizer.decode(rest[-1].argmax()).strip() == "Paris"


# ---- tensor-parallel slicing, simulated in one process ----------------------------------------

def _ranks(make, tp_size: int) -> list:
    torch.manual_seed(0)
    return [make(rank) for rank in range(tp_size)]


def test_tensor_parallel_slices_recombine(monkeypatch):
    from sgl.runtime.layers import embedding as embedding_module
    from sgl.runtime.layers.embedding import VocabParallelEmbedding
    from sgl.runtime.layers.linear import (
        MergedColumnParallelLinear,
        QKVParallelLinear,
        RowParallelLinear,
    )
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 16, generator=g)
    # q|k|v over 4 ranks with 2 KV heads: each KV head lives on two ranks.
    wq, wk, wv = (torch.randn(n * 4, 16, generator=g) for n in (8, 2, 2))
    qkv = _ranks(lambda r: QKVParallelLinear(16, 4, 8, 2, bias=False, tp_rank=r, tp_size=4), 4)
    for layer in qkv:
        for shard, w in zip("qkv", (wq, wk, wv)):
            layer.weight_loader(layer.weight, w, shard)
    outs = [layer(x).split([8, 4, 4], dim=-1) for layer in qkv]
    torch.testing.assert_close(torch.cat([o[0] for o in outs], -1), x @ wq.T)
    for r, (_, k, v) in enumerate(outs):
        torch.testing.assert_close(k, x @ wk[4 * (r // 2):4 * (r // 2) + 4].T)
        torch.testing.assert_close(v, x @ wv[4 * (r // 2):4 * (r // 2) + 4].T)
    # gate|up over 2 ranks: each rank holds [its gate rows, its up rows].
    gate, up = torch.randn(12, 16, generator=g), torch.randn(12, 16, generator=g)
    merged = _ranks(lambda r: MergedColumnParallelLinear(16, [12, 12], tp_rank=r, tp_size=2), 2)
    for layer in merged:
        layer.weight_loader(layer.weight, gate, 0)
        layer.weight_loader(layer.weight, up, 1)
    torch.testing.assert_close(merged[1](x), torch.cat([x @ gate[6:].T, x @ up[6:].T], -1))
    # Row-parallel: partial sums add up to the full product, the bias counted once.
    w, b = torch.randn(5, 16, generator=g), torch.randn(5, generator=g)
    rows = _ranks(lambda r: RowParallelLinear(16, 5, bias=True, tp_rank=r, tp_size=2, reduce_results=False), 2)
    for layer in rows:
        layer.weight_loader(layer.weight, w)
        layer.weight_loader(layer.bias, b)
    torch.testing.assert_close(rows[0](x[:, :8]) + rows[1](x[:, 8:]), x @ w.T + b)
    # Vocab-parallel embedding (vocab 7 over 2 ranks: the last rank is padded).
    table = torch.randn(7, 4, generator=g)
    embeds = _ranks(lambda r: VocabParallelEmbedding(7, 4, tp_rank=r, tp_size=2), 2)
    for layer in embeds:
        layer.weight_loader(layer.weight, table)
    ids = torch.tensor([0, 6, 3, 4])
    monkeypatch.setattr(embedding_module, "tp_all_reduce", lambda t, tp_size: t)  # sum by hand
    torch.testing.assert_close(embeds[0](ids) + embeds[1](ids), table[ids])
