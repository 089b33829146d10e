"""Prefill-decode disaggregation end to end on CPU: a prefill server and a decode server (the
bundled model, gloo) behind `sgl router --pd-disaggregation`, on loopback. The reference is a
colocated run of the same model: the decode server itself, asked directly (a request without
bootstrap fields is served in full). Both pools are back to idle after every test."""
from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai
import pytest
import requests

from sgl.runtime.server.runtime import Runtime, free_port
from tests.router.conftest import RouterThread
from tests.server.conftest import generate, sse_events, wait_idle

PROMPTS = ["The first planet is", "Water boils at", "A haiku about rain:", "def add(a, b):",
           "The opposite of hot is", "Once upon a time", "Paris is the capital of",
           "Three primary colors are"]
GREEDY = {"temperature": 0, "max_new_tokens": 8}


class PD:
    def __init__(self, prefill: Runtime, decode: Runtime, bootstrap_port: int) -> None:
        self.prefill, self.decode = prefill, decode
        self.router = RouterThread(pd_disaggregation=True, prefill=[(prefill.url, bootstrap_port)],
                                   decode=[decode.url])

    def both(self, body: dict[str, Any]) -> tuple[Any, Any]:
        """(through the router, colocated on the decode server)"""
        return generate(self.router.url, body), generate(self.decode.url, body)


@pytest.fixture(scope="module")
def pd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PD]:
    logs = tmp_path_factory.mktemp("pd")
    port = free_port()
    flags = {"prefill": dict(disaggregation_mode="prefill", disaggregation_bootstrap_port=port),
             "decode": dict(disaggregation_mode="decode")}
    made: dict[str, Runtime] = {}

    def start(role: str) -> None:
        made[role] = Runtime(log_file=str(logs / f"{role}.log"), log_level="info",
                             max_total_tokens=4096, **flags[role])
    threads = [threading.Thread(target=start, args=(role,)) for role in flags]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert len(made) == 2, f"a server did not start; see {logs}"
        pair = PD(made["prefill"], made["decode"], port)
        yield pair
        pair.router.stop()
    finally:
        for runtime in made.values():
            runtime.shutdown()


@pytest.fixture(autouse=True)
def idle_after(pd: PD) -> Iterator[None]:
    yield
    for server in (pd.prefill, pd.decode):
        wait_idle(server.url)


def test_greedy_outputs_equal_a_colocated_server(pd: PD) -> None:
    for prompt in PROMPTS[:3]:  # one at a time; the concurrent test below runs all of them
        got, want = pd.both({"text": prompt, "sampling_params": GREEDY})
        assert got["output_ids"] == want["output_ids"] and got["text"] == want["text"], prompt
        assert got["meta_info"]["finish_reason"] == want["meta_info"]["finish_reason"]
        assert got["meta_info"]["prompt_tokens"] == want["meta_info"]["prompt_tokens"]


def test_concurrent_streams_equal_colocated(pd: PD) -> None:
    want = generate(pd.decode.url, {"text": PROMPTS, "sampling_params": GREEDY})

    def stream(prompt: str) -> list[Any]:
        res = requests.post(pd.router.url + "/generate", stream=True, timeout=300,
                            json={"text": prompt, "sampling_params": GREEDY, "stream": True})
        assert res.status_code == 200, res.text
        assert res.headers["x-sgl-worker"] == pd.decode.url  # the decode server streams
        return sse_events(res)
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        streams = list(pool.map(stream, PROMPTS))
    for events, expected in zip(streams, want):
        assert events[-1] == "[DONE]" and len(events) > 2  # token by token, not one blob
        assert events[-2]["output_ids"] == expected["output_ids"]
        assert events[-2]["text"] == expected["text"]


def test_n_seeded_sampling_logprobs_and_regex_as_colocated(pd: PD) -> None:
    sampled = {"text": "List three fruits:", "sampling_params": {
        "temperature": 0.9, "seed": 7, "n": 3, "max_new_tokens": 6}}
    got, want = pd.both(sampled)
    assert [r["output_ids"] for r in got] == [r["output_ids"] for r in want]
    assert len({tuple(r["output_ids"]) for r in got}) > 1  # the copies differ

    scored = {"text": "The sky is blue because", "return_logprob": True, "logprob_start_len": 0,
              "top_logprobs_num": 3, "sampling_params": GREEDY}
    got, want = pd.both(scored)
    for key in ("input_token_logprobs", "output_token_logprobs", "output_top_logprobs"):
        a, b = got["meta_info"][key], want["meta_info"][key]
        assert len(a) == len(b) > 0, key
        assert _flat(a) == pytest.approx(_flat(b), abs=1e-4), key

    regex = {"text": "A phone number:", "sampling_params": {
        "temperature": 0, "max_new_tokens": 16, "regex": r"\([0-9]{3}\) [0-9]{3}-[0-9]{4}"}}
    got, want = pd.both(regex)
    assert got["text"] == want["text"] and got["output_ids"] == want["output_ids"]


def test_openai_chat_through_the_router(pd: PD) -> None:
    messages = [{"role": "user", "content": "Name a color."}]
    answers = []
    for url in (pd.router.url, pd.decode.url):
        client = openai.OpenAI(base_url=url + "/v1", api_key="none")
        full = client.chat.completions.create(model="default", messages=messages, max_tokens=8,
                                              temperature=0)
        chunks = client.chat.completions.create(model="default", messages=messages, max_tokens=8,
                                                temperature=0, stream=True)
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        answers.append((full.choices[0].message.content, streamed))
    assert answers[0] == answers[1] and answers[0][0] == answers[0][1]


def test_the_prefill_server_reuses_its_cache(pd: PD) -> None:
    system = "You are a careful assistant who answers in one short sentence. " * 4
    first = generate(pd.router.url, {"text": system + "What is 2+2?", "sampling_params": GREEDY})
    second = generate(pd.router.url, {"text": system + "What is 3+3?", "sampling_params": GREEDY})
    assert first["meta_info"]["cached_tokens"] < 8
    assert second["meta_info"]["cached_tokens"] >= first["meta_info"]["prompt_tokens"] - 12


def test_bad_input_is_a_400_naming_the_field(pd: PD) -> None:
    res = requests.post(pd.router.url + "/generate", timeout=60, json={
        "text": "hi", "sampling_params": {"temperature": -1}})
    assert res.status_code == 400, res.text
    assert res.json()["error"]["param"] == "sampling_params.temperature"


def _flat(entries: list[Any]) -> list[float]:
    """The logprob values of (logprob, id, text) triples, or of lists of them (top logprobs);
    token ids must match exactly."""
    out: list[float] = []
    for entry in entries:
        for triple in ([entry] if entry and not isinstance(entry[0], list) else entry or []):
            out.append(0.0 if triple[0] is None else triple[0])
            out.append(float(triple[1]))
    return out
