"""`sgl serve --speculative-algorithm NGRAM` on the bundled model: the native and OpenAI routes give
the tokens the engine gives without speculation, streamed or not, and report the verifications in
meta_info."""
from __future__ import annotations

import os

import openai
import pytest
import requests

from sgl.runtime.engine import Engine
from sgl.runtime.server.runtime import Runtime
from tests.server.conftest import generate, sse_events

PROMPT = ("Repeat exactly: the quick brown fox jumps over the lazy dog. "
          "the quick brown fox jumps over the lazy dog.")
GREEDY = {"max_new_tokens": 40, "temperature": 0, "ignore_eos": True}


@pytest.fixture(scope="module")
def expected() -> str:
    with Engine(max_total_tokens=2048) as engine:
        return engine.generate(PROMPT, GREEDY)["text"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    log = os.path.join(str(tmp_path_factory.mktemp("spec")), "server.log")
    runtime = Runtime(speculative_algorithm="NGRAM", speculative_num_draft_tokens=6,
                      max_total_tokens=2048, log_file=log)
    try:
        yield runtime
    finally:
        runtime.shutdown()


def test_native_route_is_lossless_and_reports_verifications(server, expected):
    out = generate(server.url, {"text": PROMPT, "sampling_params": GREEDY})
    assert out["text"] == expected
    meta = out["meta_info"]
    assert 0 < meta["spec_verify_ct"] < meta["completion_tokens"]  # fewer passes than tokens
    # The first token comes from prefill, each verification gives its accepted drafts plus one;
    # steps without a draft (no n-gram match) give one token each.
    assert meta["spec_accepted_tokens"] > 0
    assert 1 + meta["spec_accepted_tokens"] + meta["spec_verify_ct"] <= meta["completion_tokens"]


def test_streaming_and_openai_routes_are_lossless(server, expected):
    res = requests.post(server.url + "/generate", stream=True, timeout=300,
                        json={"text": PROMPT, "sampling_params": GREEDY, "stream": True})
    events = [e for e in sse_events(res) if e != "[DONE]"]
    assert events[-1]["text"] == expected
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="none")
    done = client.completions.create(model="default", prompt=PROMPT, max_tokens=40, temperature=0,
                                     extra_body={"ignore_eos": True})
    assert done.choices[0].text == expected
