"""Greedy parity with transformers (float32): tiny random models of each architecture and the
bundled SmolLM2, under every scheduling path (cold, warm cache, tiny chunks, mixed batch,
retraction), and prompt/output logprobs against transformers' log-softmax."""
from __future__ import annotations

import pytest
import torch
import transformers

from sgl.runtime.engine import Engine

NEW_TOKENS = 32


def tiny_config(arch: str) -> transformers.PretrainedConfig:
    common = dict(vocab_size=211, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  initializer_range=0.3, rms_norm_eps=1e-6)
    if arch == "llama":
        return transformers.LlamaConfig(**common, rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                        "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                        "original_max_position_embeddings": 64})
    if arch == "llama-tied":
        return transformers.LlamaConfig(**common, tie_word_embeddings=True,
                                        rope_scaling={"rope_type": "linear", "factor": 2.0})
    if arch == "qwen2":
        return transformers.Qwen2Config(**common, tie_word_embeddings=False)
    if arch == "qwen3":
        return transformers.Qwen3Config(**common, head_dim=16, tie_word_embeddings=False)
    raise ValueError(arch)


PROMPTS = [[5, 17, 99, 3, 42, 8], [7] * 3 + list(range(10, 40)), [1, 2], list(range(100, 150))]


def hf_greedy(model: torch.nn.Module, prompt: list[int], n: int = NEW_TOKENS) -> list[int]:
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                             eos_token_id=None, pad_token_id=0)
    return out[0, len(prompt):].tolist()


@pytest.fixture(scope="module", params=["llama", "llama-tied", "qwen2", "qwen3"])
def tiny(request, tmp_path_factory):
    torch.manual_seed(0)
    cfg = tiny_config(request.param)
    model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    path = str(tmp_path_factory.mktemp(request.param))
    model.save_pretrained(path)
    return path, [hf_greedy(model, p) for p in PROMPTS]


def engine_greedy(engine: Engine, prompts: list[list[int]], n: int = NEW_TOKENS) -> list[list[int]]:
    outs = engine.generate(input_ids=prompts, sampling_params={"max_new_tokens": n, "temperature": 0,
                                                               "ignore_eos": True})
    return [o["output_ids"] for o in outs]


@pytest.mark.parametrize("engine_kw", [
    {}, {"chunked_prefill_size": 4}, {"max_total_tokens": 120, "chunked_prefill_size": 16},
    {"schedule_policy": "lpm"}, {"disable_radix_cache": True},
], ids=["default", "tiny-chunks", "tiny-pool", "lpm", "no-radix"])
def test_tiny_models_match_transformers(tiny, engine_kw):
    path, expected = tiny
    with Engine(path, skip_tokenizer_init=True, **engine_kw) as engine:
        assert engine_greedy(engine, PROMPTS) == expected          # mixed batch, cold cache
        one_by_one = [engine_greedy(engine, [p])[0] for p in PROMPTS]
        assert one_by_one == expected                               # warm cache, alone
        if engine_kw.get("max_total_tokens"):
            assert engine.scheduler.stats.num_retracted > 0, "tiny pool should force retraction"
        engine.call_in_scheduler(lambda s: s.check_pool_invariant())


# -- the bundled SmolLM2 (GGUF, Q4_1 dequantized) -------------------------------------------

@pytest.fixture(scope="module")
def smol_engine():
    with Engine(chunked_prefill_size=8) as engine:
        yield engine


TEXTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,"]


def test_bundled_model_greedy_matches_transformers(bundled_hf, smol_engine):
    model, tok = bundled_hf
    prompts = [tok.encode(t) for t in TEXTS]
    n = 16  # transformers' generate on the 135M model is the slow half of this test
    expected = [hf_greedy(model, p, n) for p in prompts]
    assert engine_greedy(smol_engine, prompts, n) == expected
    assert [engine_greedy(smol_engine, [p], n)[0] for p in prompts] == expected  # cached prefixes now
    assert smol_engine.generate(input_ids=prompts[0], sampling_params={"max_new_tokens": 1})[
        "meta_info"]["cached_tokens"] > 0


def test_bundled_model_logprobs_match_transformers(bundled_hf, smol_engine):
    model, tok = bundled_hf
    prompt = tok.encode(TEXTS[2])
    out = smol_engine.generate(input_ids=prompt, sampling_params={"max_new_tokens": 8, "temperature": 0},
                               return_logprob=True, logprob_start_len=0, top_logprobs_num=3)
    full = prompt + out["output_ids"]
    with torch.no_grad():
        ref = torch.log_softmax(model(torch.tensor([full])).logits[0].float(), dim=-1)
    meta = out["meta_info"]
    in_lp = meta["input_token_logprobs"]
    assert in_lp[0][0] is None and [t for _, t, _ in in_lp] == prompt
    for p in range(1, len(prompt)):
        assert abs(in_lp[p][0] - ref[p - 1, prompt[p]].item()) < 1e-4
    for i, (lp, tid, _) in enumerate(meta["output_token_logprobs"]):
        assert abs(lp - ref[len(prompt) - 1 + i, tid].item()) < 1e-4
    top_ids = [t for _, t, _ in meta["output_top_logprobs"][0]]
    assert top_ids == ref[len(prompt) - 1].topk(3).indices.tolist()
