"""The request mix of `python -m sgl.bench_soak` (a library, not a program): each kind sends one
request the way a client would and judges the answer.

Kinds: plain and streamed /generate and /v1/chat/completions, n > 1 on both, a regex and a
json_schema grammar, a stream the client leaves after its first event (an abort), and a bad
input that must be a 4xx. A 5xx is always a failure; so is a 4xx for a good request, a 2xx for
a bad one, a stream without a final event, or a grammar answer that does not match."""
from __future__ import annotations

import http.client
import json
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests

SUBJECTS = ["the sea", "a small town", "winter", "bread", "a violin", "the moon", "trains",
            "an old map", "rain", "a lighthouse", "bees", "chess"]
STYLES = ["Write one sentence about", "Describe", "Tell me a fact about", "List two words for"]
ANSWER_REGEX = r"(yes|no|maybe)"
COLOUR_SCHEMA = {"type": "object", "properties": {"colour": {"enum": ["red", "green", "blue"]}},
                 "required": ["colour"], "additionalProperties": False}
DEEP_SCHEMA = '{"type": "object", "properties": {"a": ' * 150 + '{"type": "string"}' + "}}" * 150
# (route, body): each must be answered with a 4xx; bytes bodies are sent as they are
BAD_INPUTS: list[tuple[str, Any]] = [
    ("/generate", b'{"text": "hi", '),
    ("/generate", {"sampling_params": {}}),
    ("/generate", {"text": "hi", "sampling_params": {"temperature": -1}}),
    ("/generate", {"text": "hi", "sampling_params": {"max_new_tokens": -3}}),
    ("/generate", {"input_ids": [10**7]}),
    ("/generate", {"text": "hi", "return_logprob": True, "logprob_start_len": 0,
                   "top_logprobs_num": 50000}),
    ("/generate", {"text": "hi", "sampling_params": {"logit_bias": {"5": 1e308}}}),
    ("/generate", b'{"text": "\\ud800x"}'),
    ("/generate", b"[" * 100_000 + b"]" * 100_000),
    ("/generate", {"text": "hi", "sampling_params": {"json_schema": DEEP_SCHEMA}}),
    ("/generate", {"text": "hi", "sampling_params": {"regex": "(" * 5000 + "a" + ")" * 5000}}),
    ("/generate", {"text": ["a", "b"], "rid": ["soak-dup", "soak-dup"]}),
    ("/v1/chat/completions", {"messages": []}),
    ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "hi"}]}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "top_p": 1.5}),
]


@dataclass
class Outcome:
    kind: str
    status: int  # HTTP status; 0: no answer (connection error)
    ok: bool
    error: str = ""
    seconds: float = 0.0


@dataclass
class MixConfig:
    url: str
    model: str
    max_new_tokens: int
    timeout_s: float = 300.0


def prompt(rng: random.Random) -> str:
    """Prompts share prefixes (styles) and differ in their tails, so the radix cache both hits
    and grows."""
    return f"{rng.choice(STYLES)} {rng.choice(SUBJECTS)} (note {rng.randrange(1000)})."


def _sampling(rng: random.Random, cfg: MixConfig) -> dict[str, Any]:
    return {"max_new_tokens": cfg.max_new_tokens, "temperature": rng.choice([0.0, 0.7, 1.0])}


def _chat_body(rng: random.Random, cfg: MixConfig, **extra: Any) -> dict[str, Any]:
    return {"model": cfg.model, "messages": [{"role": "user", "content": prompt(rng)}],
            "max_tokens": cfg.max_new_tokens, "temperature": rng.choice([0.0, 0.7]), **extra}


def _post(session: requests.Session, cfg: MixConfig, route: str, body: Any,
          stream: bool = False) -> requests.Response:
    if isinstance(body, bytes):
        return session.post(cfg.url + route, data=body, timeout=cfg.timeout_s,
                            headers={"Content-Type": "application/json"})
    return session.post(cfg.url + route, json=body, timeout=cfg.timeout_s, stream=stream)


def _judge(kind: str, res: requests.Response, check: Callable[[Any], str]) -> Outcome:
    if res.status_code != 200:
        return Outcome(kind, res.status_code, False, res.text[:300])
    problem = check(res)
    return Outcome(kind, 200, not problem, problem)


def _sse(res: requests.Response) -> list[Any]:
    events = []
    for line in res.iter_lines():
        if line.startswith(b"data:"):
            body = line[5:].strip()
            events.append("[DONE]" if body == b"[DONE]" else json.loads(body))
    return events


def _stream_problem(events: list[Any], finish: Callable[[Any], Any]) -> str:
    """A stream must end with [DONE] after an event that carries a finish reason, no errors."""
    if not events or events[-1] != "[DONE]":
        return "stream did not end with [DONE]"
    data = [e for e in events if e != "[DONE]"]
    if any("error" in e for e in data):
        return f"error event: {next(e for e in data if 'error' in e)}"
    return "" if any(finish(e) for e in data) else "no event carried a finish reason"


def _generate_finished(out: Any) -> str:
    outs = out if isinstance(out, list) else [out]
    bad = [o for o in outs if not (o.get("meta_info") or {}).get("finish_reason")]
    return f"{len(bad)} outputs without a finish reason" if bad else ""


def gen_plain(s: requests.Session, rng: random.Random, cfg: MixConfig) -> Outcome:
    body = {"text": prompt(rng), "sampling_params": _sampling(rng, cfg)}
    return _judge("generate", _post(s, cfg, "/generate", body), lambda r: _generate_finished(r.json()))


def gen_stream(s: requests.Session, rng: random.Random, cfg: MixConfig) -> Outcome:
    body = {"text": prompt(rng), "sampling_params": _sampling(rng, cfg), "stream": True}
    finish = lambda e: (e.get("meta_info") or {}).get("finish_reason")
    return _judge("generate_stream", _post(s, cfg, "/generate", body, stream=True),
                  lambda r: _stream_problem(_sse(r), finish))


def gen_n(s: requests.Session, rng: random.Random, cfg: MixConfig) -> Outcome:
    body = {"text": prompt(rng), "sampling_params": {**_sampling(rng, cfg), "n": 2,
                                                     "temperature": 0.8}}

    def check(r: requests.Response) -> str:
        out = r.json()
        return _generate_finished(out) or ("" if len(out) == 2 else f"n=2 gave {len(out)}")
    return _judge("generate_n", _post(s, cfg, "/generate", body), check)


def chat_plain(s: requests.Session, rng: random.Random, cfg: MixConfig) -> Outcome:
    n = rng.choice([1, 1, 2])

    def check(r: requests.Response) -> str:
        choices = r.json()["choices"]
        if len(choices) != n or not all(c["finish_reason"] for c in choices):
            return f"n={n}: {len(choices)} choices, finish {[c['finish_reason'] for c in choices]}"
        return ""
    return _judge("chat", _post(s, cfg, "/v1/chat/completions", _chat_body(rng, cfg, n=n)), check)


def chat_stream(s: requests.Session, rng: random.Random, cfg: MixConfig) -> Outcome:
    body = _chat_body(rng, cfg, stream=True)
    finish = lambda e: any(c.get("finish_reason") for c in e.get("choices", []))
    return _judge("chat_stream", _post(s, cfg, "/v1/chat/completions", body, stream=True),
                  lambda r: _stream_problem(_sse(r), finish))


def regex(s: requests.Session, rng: random.Random, cfg: MixConfig) -> Outcome:
    body = {"text": prompt(rng) + " Answer:", "sampling_params": {
        "max_new_tokens": 8, "temperature": 0.7, "regex": ANSWER_REGEX}}

    def check(r: requests.Response) -> str:
        text = r.json()["text"]
        return "" if re.fullmatch(ANSWER_REGEX, text) else f"regex not matched: {text!r}"
    return _judge("regex", _post(s, cfg, "/generate", body), check)


def json_schema(s: requests.Session, rng: random.Random, cfg: MixConfig) -> Outcome:
    fmt = {"type": "json_schema", "json_schema": {"name": "colour", "schema": COLOUR_SCHEMA}}
    body = _chat_body(rng, cfg, response_format=fmt, max_tokens=12)  # {"colour": "green"}

    def check(r: requests.Response) -> str:
        choice = r.json()["choices"][0]
        if choice["finish_reason"] != "stop":
            return ""  # cut by max_tokens: a prefix, not judged
        try:
            value = json.loads(choice["message"]["content"])
        except json.JSONDecodeError as e:
            return f"not JSON: {e}"
        ok = isinstance(value, dict) and set(value) == {"colour"} and value["colour"] in (
            "red", "green", "blue")
        return "" if ok else f"schema not met: {value!r}"
    return _judge("json_schema", _post(s, cfg, "/v1/chat/completions", body), check)


def abort(s: requests.Session, rng: random.Random, cfg: MixConfig) -> Outcome:
    """Stream a long answer, read the headers and the first event, then drop the connection (a
    fresh socket, closed for sure, unlike a pooled one)."""
    body = {"text": prompt(rng), "stream": True,
            "sampling_params": {"max_new_tokens": 256, "ignore_eos": True, "temperature": 0.7}}
    parts = urlsplit(cfg.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=cfg.timeout_s)
    try:
        conn.request("POST", "/generate", json.dumps(body),
                     {"Content-Type": "application/json"})
        res = conn.getresponse()
        first = res.readline() if res.status == 200 else res.read(300)
        ok = res.status == 200 and first.startswith(b"data:")
        return Outcome("abort", res.status, ok, "" if ok else first[:300].decode(errors="replace"))
    finally:
        conn.close()


def bad_input(s: requests.Session, rng: random.Random, cfg: MixConfig) -> Outcome:
    route, body = rng.choice(BAD_INPUTS)
    if isinstance(body, dict) and route.startswith("/v1/"):
        body = {"model": cfg.model, **body}
    res = _post(s, cfg, route, body)
    ok = 400 <= res.status_code < 500
    return Outcome("bad_input", res.status_code, ok,
                   "" if ok else f"{route} {str(body)[:80]} -> {res.status_code}")


# kind -> (sender, weight)
MIX: dict[str, tuple[Callable[[requests.Session, random.Random, MixConfig], Outcome], int]] = {
    "generate": (gen_plain, 4), "generate_stream": (gen_stream, 3), "generate_n": (gen_n, 1),
    "chat": (chat_plain, 3), "chat_stream": (chat_stream, 2), "regex": (regex, 1),
    "json_schema": (json_schema, 1), "abort": (abort, 2), "bad_input": (bad_input, 2)}


def send_one(s: requests.Session, rng: random.Random, cfg: MixConfig,
             kind: str | None = None) -> Outcome:
    """One request of a kind drawn by weight (or the kind given); a broken connection is an
    Outcome with status 0, never an exception."""
    kind = kind or rng.choices(list(MIX), [w for _, w in MIX.values()])[0]
    t0 = time.monotonic()
    try:
        out = MIX[kind][0](s, rng, cfg)
    except (requests.RequestException, http.client.HTTPException, OSError, ValueError) as e:
        out = Outcome(kind, 0, False, f"{type(e).__name__}: {e}")
    out.seconds = time.monotonic() - t0
    return out
