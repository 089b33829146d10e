"""SGLang wire compatibility of /generate and the routes SGLang clients call, on the shared
bundled-model server: stop_regex against an unconstrained reference run, defaults of fields of
features sgl lacks accepted and real values refused with a 400 naming them, KV freed after."""
from __future__ import annotations

import re

import pytest
import requests

from tests.server.conftest import generate, wait_idle

PROMPT = "Count: 1, 2, 3,"


def _post(url: str, route: str, body: dict) -> requests.Response:
    return requests.post(url + route, json=body, timeout=300)


def test_stop_regex_stops_where_the_output_first_matches(server):
    sp = {"max_new_tokens": 16, "temperature": 0}
    ref = generate(server.url, {"text": PROMPT, "sampling_params": sp, "return_logprob": True,
                                "return_text_in_logprobs": True})
    out = generate(server.url, {"text": PROMPT, "sampling_params": dict(sp, stop_regex=r"[0-9]")})
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": "[0-9]"}
    # reference: the shortest prefix of the unconstrained tokens whose text has a digit
    pieces = [t for _, _, t in ref["meta_info"]["output_token_logprobs"]]
    first = next(n for n in range(1, 17) if re.search(r"[0-9]", "".join(pieces[:n])))
    assert out["output_ids"] == ref["output_ids"][:first]
    assert out["text"] == "".join(pieces[:first])  # the match stays in the text


def test_sglang_frontend_payload_with_nulls_and_defaults(server):
    body = {"text": "Hello", "rid": "compat-1", "priority": 3, "return_hidden_states": False,
            "lora_path": None, "image_data": None, "session_params": None, "log_metrics": True,
            "custom_labels": {"team": "a"}, "return_text_in_logprobs": False,
            "sampling_params": {"max_new_tokens": 2, "stop": [], "stop_regex": [],
                                "stop_token_ids": None, "n": None, "regex": None,
                                "json_schema": None, "custom_params": {"k": 1},
                                "beam_width": None, "stream_interval": 1, "temperature": 0}}
    out = generate(server.url, body)
    assert out["meta_info"]["id"] == "compat-1" and out["meta_info"]["completion_tokens"] == 2


@pytest.mark.parametrize("field,value,param", [
    ("image_data", "data:image/png;base64,AAAA", "image_data"),
    ("lora_path", "/adapters/x", "lora_path"),
    ("return_hidden_states", True, "return_hidden_states"),
    ("session_params", {"id": "s"}, "session_params"),
    ("priority", "high", "priority"),
    ("custom_labels", "x", "custom_labels"),
])
def test_unsupported_feature_values_are_400s(server, field, value, param):
    res = _post(server.url, "/generate", {"text": "Hi", field: value,
                                         "sampling_params": {"max_new_tokens": 1}})
    assert res.status_code == 400, res.text
    assert res.json()["error"]["param"] == param and field in res.json()["error"]["message"]


@pytest.mark.parametrize("sampling,param", [
    ({"stop_regex": "(unclosed"}, "sampling_params.stop_regex"),
    ({"stop_regex": ".*"}, "sampling_params.stop_regex"),
    ({"stop_regex": 5}, "sampling_params.stop_regex"),
    ({"beam_width": 4}, "sampling_params.beam_width"),
    ({"custom_params": [1]}, "sampling_params.custom_params"),
    ({"stream_interval": 0}, "sampling_params.stream_interval"),
])
def test_bad_sampling_values_are_400s(server, sampling, param):
    res = _post(server.url, "/generate", {"text": "Hi", "sampling_params": sampling})
    assert res.status_code == 400, res.text
    assert res.json()["error"]["param"] == param
    wait_idle(server.url)


def test_concate_and_append_and_info_routes(server):
    ok = _post(server.url, "/concate_and_append_request", {"src_rids": ["a", "b"], "dst_rid": "p"})
    assert ok.status_code == 200 and ok.json()["success"] is True
    bad = _post(server.url, "/concate_and_append_request", {"src_rids": "a", "dst_rid": "p"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "src_rids"
    info = requests.get(server.url + "/server_info", timeout=60).json()
    assert info["model_path"] == requests.get(server.url + "/model_info", timeout=60).json()["model_path"]


def test_separate_reasoning_route(server):
    res = _post(server.url, "/separate_reasoning", {"text": "<think> plan </think>\n\nanswer",
                                                   "reasoning_parser": "qwen3"})
    assert res.json() == {"text": "answer", "reasoning_text": "plan"}
    bad = _post(server.url, "/separate_reasoning", {"text": "x", "reasoning_parser": "nope"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "reasoning_parser"
