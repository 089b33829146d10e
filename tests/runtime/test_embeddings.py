"""Embedding models (`is_embedding=True`): Engine.encode against transformers' float32 hidden
states, pooled (last token, mean, CLS) and normalized as the folder's sentence-transformers files
say, through 4-token prefill chunks, on a cold cache and again on the warm radix cache. The
checkpoint is a bare decoder stack without an LM head, as Qwen3-Embedding ships. A Matryoshka
config (is_matryoshka / matryoshka_dimensions) lets `dimensions` truncate (and renormalize) the
vector; Engine.async_encode gives encode's vectors to concurrent awaiting callers."""
from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import torch
import transformers as tf
from sgl.runtime.engine import Engine
from sgl.runtime.executor.pooling import PoolingConfig, read_pooling_config
from sgl.runtime.matryoshka import Matryoshka

from tests.runtime.test_model_zoo import TINY

PROMPTS = [[5, 17, 99, 3, 42, 8], [7] * 3 + list(range(10, 40)), [1, 2], [9]]
ST_FIELDS = {"last": "pooling_mode_lasttoken", "mean": "pooling_mode_mean_tokens",
             "cls": "pooling_mode_cls_token"}


def write_sentence_transformers(path: Path, mode: str, normalize: bool) -> None:
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                        "type": "sentence_transformers.models.Normalize"})
    (path / "modules.json").write_text(json.dumps(modules))
    (path / "1_Pooling").mkdir()
    fields = {"word_embedding_dimension": TINY["hidden_size"], **{f: f == ST_FIELDS[mode] for f in ST_FIELDS.values()}}
    (path / "1_Pooling" / "config.json").write_text(json.dumps(fields))


@pytest.fixture(scope="module")
def base_model(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    """A random tiny Qwen3 decoder stack saved headless (names without `model.`, no lm_head)."""
    torch.manual_seed(0)
    config = tf.Qwen3Config(**TINY, head_dim=16)
    model = tf.Qwen3Model(config).float().eval()
    path = tmp_path_factory.mktemp("qwen3-embedding")
    model.save_pretrained(path)
    saved = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**saved, "architectures": ["Qwen3ForCausalLM"]}))
    return path, model


def link_model(src: Path, path: Path, **config_fields) -> Path:
    """A folder holding `src`'s files (linked), its config.json updated with `config_fields`."""
    path.mkdir()
    for f in src.iterdir():
        if f.name != "config.json":
            (path / f.name).symlink_to(f)
    config = json.loads((src / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, **config_fields}))
    return path


def reference(model: torch.nn.Module, prompt: list[int], pooling: PoolingConfig) -> torch.Tensor:
    with torch.no_grad():
        hidden = model(torch.tensor([prompt])).last_hidden_state[0].float()  # (T, hidden)
    vec = {"last": hidden[-1], "mean": hidden.mean(0), "cls": hidden[0]}[pooling.mode]
    vec = vec[:pooling.dimensions]  # Matryoshka: the first values (all of them when None)
    return torch.nn.functional.normalize(vec, dim=-1) if pooling.normalize else vec


@pytest.mark.parametrize("mode,normalize", [("last", True), ("mean", False), ("cls", True)])
def test_encode_matches_transformers(base_model, tmp_path, mode, normalize):
    src, hf_model = base_model
    path = link_model(src, tmp_path / "model")
    write_sentence_transformers(path, mode, normalize)
    pooling = read_pooling_config(str(path))
    assert pooling == PoolingConfig(mode, normalize)
    with Engine(str(path), skip_tokenizer_init=True, is_embedding=True, chunked_prefill_size=4) as engine:
        cold = engine.encode(input_ids=PROMPTS)
        warm = [engine.encode(input_ids=p) for p in PROMPTS]
        with pytest.raises(ValueError, match="embedding model"):
            engine.generate(input_ids=PROMPTS[0], sampling_params={"max_new_tokens": 1})
        with pytest.raises(ValueError, match="dimensions: this model is not Matryoshka"):
            engine.encode(input_ids=PROMPTS[0], dimensions=8)
        engine.call_in_scheduler(lambda s: s.check_pool_invariant())
    for prompt, c, w in zip(PROMPTS, cold, warm):
        want = reference(hf_model, prompt, pooling)
        for out in (c, w):
            assert out["meta_info"]["prompt_tokens"] == len(prompt)
            assert torch.allclose(torch.tensor(out["embedding"]), want, atol=1e-4, rtol=0)
    cached = sum(w["meta_info"]["cached_tokens"] for w in warm)
    # Only last-token pooling may reuse a prefix (the other modes need every row's hidden state).
    assert cached == (sum(len(p) - 1 for p in PROMPTS) if mode == "last" else 0)


def test_pooling_config_errors(tmp_path):
    assert read_pooling_config(str(tmp_path)) == PoolingConfig("last", True)  # no sentence-transformers files
    write_sentence_transformers(tmp_path, "mean", False)
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_max_tokens": True}))
    with pytest.raises(ValueError, match="pooling_mode_max_tokens"):
        read_pooling_config(str(tmp_path))


def test_headless_checkpoint_cannot_generate(base_model):
    with pytest.raises(ValueError, match="no LM head.*--is-embedding"):
        Engine(str(base_model[0]), skip_tokenizer_init=True)


def test_encode_needs_an_embedding_engine(tmp_path):
    tf.Qwen3ForCausalLM(tf.Qwen3Config(**TINY, head_dim=16)).save_pretrained(tmp_path)
    with Engine(str(tmp_path), skip_tokenizer_init=True) as engine:
        with pytest.raises(ValueError, match="is_embedding"):
            engine.encode(input_ids=[1, 2, 3])


@pytest.mark.parametrize("mode,normalize", [("last", True), ("mean", False)])
def test_matryoshka_dimensions(base_model, tmp_path, mode, normalize):
    """dimensions=k gives the pooled vector's first k values, renormalized when the model
    normalizes: from the engine's own full vector and from transformers'."""
    src, hf_model = base_model
    path = link_model(src, tmp_path / "model", is_matryoshka=True)
    write_sentence_transformers(path, mode, normalize)
    hidden_size = TINY["hidden_size"]
    with Engine(str(path), skip_tokenizer_init=True, is_embedding=True, chunked_prefill_size=4) as engine:
        full = engine.encode(input_ids=PROMPTS)
        short = {k: engine.encode(input_ids=PROMPTS, dimensions=k) for k in (1, 24, hidden_size)}
        for bad in (0, hidden_size + 1, True, "8"):
            with pytest.raises(ValueError, match="^dimensions must be"):
                engine.encode(input_ids=PROMPTS[0], dimensions=bad)
        engine.call_in_scheduler(lambda s: s.check_pool_invariant())
    for k, outs in short.items():
        for prompt, f, out in zip(PROMPTS, full, outs):
            got, head = torch.tensor(out["embedding"]), torch.tensor(f["embedding"][:k])
            assert got.shape == (k,)
            want = torch.nn.functional.normalize(head, dim=-1) if normalize else head
            assert torch.allclose(got, want, atol=1e-5, rtol=0)
            want = reference(hf_model, prompt, PoolingConfig(mode, normalize, dimensions=k))
            assert torch.allclose(got, want, atol=1e-4, rtol=0)


def test_matryoshka_config_fields():
    """As SGLang reads config.json: a matryoshka_dimensions list implies is_matryoshka."""
    assert Matryoshka.of(tf.Qwen3Config(**TINY)) == Matryoshka(TINY["hidden_size"], False, None)
    listed = Matryoshka.of(tf.Qwen3Config(**TINY, matryoshka_dimensions=[16, 32]))
    assert listed == Matryoshka(TINY["hidden_size"], True, (16, 32))
    assert Matryoshka.of(tf.Qwen3Config(**TINY, is_matryoshka=True)).is_matryoshka
    assert listed.check(None) is None and listed.check(32) == 32


def test_async_encode_matches_encode(base_model, tmp_path):
    """Concurrent async_encode calls under asyncio.gather (a running event loop) give encode's
    vectors; only the sizes in matryoshka_dimensions are allowed, and a refused call leaves the
    others alone."""
    path = link_model(base_model[0], tmp_path / "model", matryoshka_dimensions=[16, 32])
    calls = [{"input_ids": p, "dimensions": d} for p, d in zip(PROMPTS, (None, 16, 32, 16))]
    calls.append({"input_ids": PROMPTS[:2], "dimensions": 32})

    async def encode_all(engine: Engine) -> list:
        refused = engine.async_encode(input_ids=PROMPTS[0], dimensions=24)
        return await asyncio.gather(refused, *(engine.async_encode(**c) for c in calls),
                                    return_exceptions=True)

    with Engine(str(path), skip_tokenizer_init=True, is_embedding=True, chunked_prefill_size=4) as engine:
        refused, *got = asyncio.run(encode_all(engine))
        want = [engine.encode(**c) for c in calls]
        engine.call_in_scheduler(lambda s: s.check_pool_invariant())
    assert isinstance(refused, ValueError) and "matryoshka_dimensions [16, 32]" in str(refused)
    for call, g, w in zip(calls, got, want):
        assert isinstance(g, type(w)), g
        for a, b in zip(g if isinstance(g, list) else [g], w if isinstance(w, list) else [w]):
            assert len(a["embedding"]) == len(b["embedding"]) == (call["dimensions"] or TINY["hidden_size"])
            assert torch.allclose(torch.tensor(a["embedding"]), torch.tensor(b["embedding"]), atol=1e-5, rtol=0)
            assert a["meta_info"]["prompt_tokens"] == b["meta_info"]["prompt_tokens"]


@pytest.mark.gpu
def test_encode_on_the_triton_backend(base_model, tmp_path):
    """CUDA, float32, Triton attention, 4-token chunks: the vectors of the CPU test."""
    src, hf_model = base_model
    with Engine(str(src), skip_tokenizer_init=True, is_embedding=True, chunked_prefill_size=4,
                device="cuda", dtype="float32") as engine:
        outs = engine.encode(input_ids=PROMPTS)
        warm = engine.encode(input_ids=PROMPTS[1])
    pooling = PoolingConfig()
    for prompt, out in zip(PROMPTS, outs):
        assert torch.allclose(torch.tensor(out["embedding"]), reference(hf_model, prompt, pooling), atol=1e-4, rtol=0)
    assert torch.allclose(torch.tensor(warm["embedding"]), torch.tensor(outs[1]["embedding"]), atol=1e-4, rtol=0)
