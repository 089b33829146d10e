"""One live server for the suite (bundled model, loopback, free port), and a helper to start
tiny dummy-weight servers for life-cycle tests."""
from __future__ import annotations

import json
import os
import time
from typing import Any, Iterator

import pytest
import requests

from sgl.runtime.server import Runtime

TINY_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
    "hidden_size": 64, "intermediate_size": 128, "max_position_embeddings": 2048,
    "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 2,
    "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "tie_word_embeddings": False,
    "vocab_size": 512, "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float32"}


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    log = tmp_path_factory.mktemp("server") / "server.log"
    runtime = Runtime(log_file=str(log), log_level="info", log_requests=True,
                      enable_metrics=True, max_total_tokens=8192)
    runtime.log_path = log
    yield runtime
    runtime.shutdown()


@pytest.fixture(scope="session")
def model_name(server: Runtime) -> str:
    return requests.get(server.url + "/v1/models", timeout=30).json()["data"][0]["id"]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = tmp_path_factory.mktemp("tiny-model")
    (folder / "config.json").write_text(json.dumps(TINY_CONFIG))
    return str(folder)


def start_tiny(model_dir: str, log_dir: Any, **kwargs: Any) -> Runtime:
    """A server with random weights from a 2-layer config: starts in seconds."""
    kwargs.setdefault("max_total_tokens", 2048)
    return Runtime(model_path=model_dir, load_format="dummy", skip_tokenizer_init=True,
                   log_file=os.path.join(str(log_dir), "tiny.log"), log_level="info", **kwargs)


def generate(url: str, body: dict, **kw: Any) -> Any:
    res = requests.post(url + "/generate", json=body, timeout=300, **kw)
    assert res.status_code == 200, res.text
    return res.json()


def sse_events(res: Any) -> list[Any]:
    """Every `data:` payload of a response (or of an iterator of its lines), [DONE] included
    as the string."""
    out = []
    for line in res.iter_lines() if hasattr(res, "iter_lines") else res:
        if line.startswith(b"data:"):
            body = line[5:].strip()
            out.append("[DONE]" if body == b"[DONE]" else json.loads(body))
    return out


def server_state(url: str, **kw: Any) -> dict[str, Any]:
    return requests.get(url + "/get_server_info", timeout=60, **kw).json()


def wait_idle(url: str, timeout_s: float = 60.0, **kw: Any) -> dict[str, Any]:
    """Wait until nothing runs and every KV slot is free or merely cached (evictable)."""
    deadline = time.time() + timeout_s
    while True:
        state = server_state(url, **kw)
        idle = (state["num_running_reqs"] == 0 and state["num_queue_reqs"] == 0
                and state["available_kv_tokens"] == state["max_total_tokens"]
                and state["locked_kv_tokens"] == 0)
        if idle:
            return state
        assert time.time() < deadline, f"KV not freed: {state}"
        time.sleep(0.2)
