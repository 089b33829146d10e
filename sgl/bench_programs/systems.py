"""The system under test, started from server arguments: the in-process `Engine` or an sgl
server (`sgl.Runtime`, a subprocess on loopback). Each gives the backend programs run on, the
tokenizer the runtime uses, its prefix-cache counters, and one independent completion call (the
baseline's request: the full prompt, nothing shared)."""
from __future__ import annotations

import os
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any

import requests

from sgl.bench_programs.recorder import Call

_SAMPLING_TO_COMPLETIONS = {"max_new_tokens": "max_tokens", "min_new_tokens": "min_tokens"}
_SAMPLING_PASSED = {"n", "stop", "stop_token_ids", "temperature", "top_p", "top_k", "min_p",
                    "frequency_penalty", "presence_penalty", "ignore_eos", "json_schema", "regex",
                    "skip_special_tokens"}


@dataclass
class Usage:
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0

    def add(self, other: Usage) -> None:
        self.prompt_tokens += other.prompt_tokens
        self.cached_tokens += other.cached_tokens
        self.completion_tokens += other.completion_tokens


def prompts_of(payload: dict[str, Any]) -> list[Any]:
    """The prompts of a /generate payload: texts, or token-id lists."""
    if payload.get("text") is not None:
        text = payload["text"]
        return list(text) if isinstance(text, list) else [text]
    ids = payload["input_ids"]
    return list(ids) if ids and isinstance(ids[0], list) else [ids]


def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids exactly as the runtime's front end makes them (TokenizerManager.tokenize)."""
    return tokenizer.encode(text, add_special_tokens=False)


class EngineSystem:
    kind = "engine"

    def __init__(self, server_args: dict[str, Any]) -> None:
        from sgl.lang.backends.local import LocalBackend
        from sgl.runtime.engine import Engine
        self.engine = Engine(**server_args)
        self.backend = LocalBackend(self.engine)
        self.tokenizer = self.engine.tokenizer
        self.max_total_tokens = int(self.engine.runner.max_total_tokens)

    def counters(self) -> tuple[int, int]:
        """(total prompt tokens, total cached tokens) as the scheduler counts them."""
        return self.engine.call_in_scheduler(
            lambda s: (s.stats.total_prompt_tokens, s.stats.total_cached_tokens))

    def flush(self) -> None:
        _flush(self.engine.flush_cache)

    def complete(self, call: Call) -> Usage:
        """The call on its own, as a client without the language sends it (see completion_body)."""
        payload = dict(call.payload)
        if payload.get("return_logprob"):
            payload["logprob_start_len"] = 0  # an echo of the whole prompt's logprobs
        kwargs = {("prompt" if k == "text" else k): v for k, v in payload.items() if v is not None}
        out = self.engine.generate(**kwargs)
        return _usage_of_results(out if isinstance(out, list) else [out])

    def shutdown(self) -> None:
        self.engine.shutdown()


class HttpSystem:
    kind = "http"

    def __init__(self, server_args: dict[str, Any]) -> None:
        from sgl.lang.backends.runtime_endpoint import RuntimeEndpoint
        from sgl.runtime.loader.tokenizer import get_tokenizer
        from sgl.runtime.server.runtime import Runtime
        args = {k: v for k, v in server_args.items() if k != "port"}  # a free port
        fd, self.log_file = tempfile.mkstemp(prefix="sgl-bench-programs-", suffix=".log")
        os.close(fd)
        try:
            self.runtime = Runtime(log_file=self.log_file, **args)
        except Exception as e:  # say why here: the log file may be on a machine nobody reads
            with open(self.log_file, errors="replace") as f:
                raise RuntimeError(f"the server did not start: {e}\n{f.read()[-3000:]}") from e
        self.url = self.runtime.url
        self.backend = RuntimeEndpoint(self.url, api_key=args.get("api_key"))
        info = self.backend.get_server_info()
        self.max_total_tokens = int(info["max_total_tokens"])
        self.tokenizer = get_tokenizer(info["model_path"], args.get("tokenizer_path"),
                                       bool(args.get("trust_remote_code")))
        self._headers = {"Authorization": f"Bearer {args['api_key']}"} if args.get("api_key") else {}
        self._local = threading.local()

    def counters(self) -> tuple[int, int]:
        info = self.backend.get_server_info()
        return int(info["total_prompt_tokens"]), int(info["total_cached_tokens"])

    def flush(self) -> None:
        _flush(self._try_flush)

    def _try_flush(self) -> bool:
        return requests.post(self.url + "/flush_cache", headers=self._headers, timeout=60).ok

    def complete(self, call: Call) -> Usage:
        session = getattr(self._local, "session", None) or requests.Session()
        self._local.session = session
        res = session.post(self.url + "/v1/completions", json=completion_body(call.payload),
                           headers=self._headers, timeout=3600)
        if res.status_code != 200:
            raise RuntimeError(f"/v1/completions failed with HTTP {res.status_code}: {res.text[:300]}")
        usage = res.json()["usage"]
        return Usage(usage["prompt_tokens"], (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0),
                     usage["completion_tokens"])

    def shutdown(self) -> None:
        self.runtime.shutdown()


def completion_body(payload: dict[str, Any]) -> dict[str, Any]:
    """A /generate payload as one OpenAI /v1/completions request with the full prompt(s): its
    sampling parameters under their OpenAI (or SGLang-extra) names; asked-for prompt logprobs
    become `echo` with `logprobs: 0`, which scores every prompt token."""
    prompts = prompts_of(payload)
    body: dict[str, Any] = {"model": "default", "prompt": prompts if len(prompts) > 1 else prompts[0]}
    for key, value in (payload.get("sampling_params") or {}).items():
        if key in _SAMPLING_TO_COMPLETIONS:
            body[_SAMPLING_TO_COMPLETIONS[key]] = value
        elif key in _SAMPLING_PASSED:
            body[key] = value
        elif key == "spaces_between_special_tokens" and value:
            continue  # the completions route's behaviour already
        else:
            raise ValueError(f"sampling parameter {key}={value!r} has no /v1/completions field")
    if payload.get("return_logprob"):
        body["logprobs"] = 0
        start = payload.get("logprob_start_len")
        body["echo"] = start is not None and start >= 0
    return body


def _usage_of_results(results: list[dict[str, Any]]) -> Usage:
    total = Usage()
    for r in results:
        meta = r["meta_info"]
        total.add(Usage(meta["prompt_tokens"], meta["cached_tokens"], meta["completion_tokens"]))
    return total


def _flush(try_flush: Any, timeout_s: float = 60.0) -> None:
    """Flush the prefix cache; the runtime refuses while requests run, so retry until idle."""
    deadline = time.monotonic() + timeout_s
    while not try_flush():
        if time.monotonic() > deadline:
            raise RuntimeError(f"the cache could not be flushed in {timeout_s:.0f} s (requests still running)")
        time.sleep(0.05)


def start_system(kind: str, server_args: dict[str, Any]) -> EngineSystem | HttpSystem:
    if kind == "engine":
        return EngineSystem(server_args)
    if kind == "http":
        return HttpSystem(server_args)
    raise ValueError(f"--backend must be engine or http, got {kind!r}")
