"""Backend for OpenAI-compatible endpoints (/v1/completions, /v1/chat/completions) over requests.

Completion models continue `s.text_`. Chat models are sent `s.messages_`, so a `gen` must come
right after an assistant role begins. Structured output goes only as far as the API allows:
`json_schema` becomes `response_format`; `regex` (and select on chat models, as a regex of the
choices) is sent only to self-hosted servers, which accept it as an extra field; select on
completion models scores choices with echoed prompt logprobs."""
from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import Any

from sgl.lang.backends.base import BaseBackend
from sgl.lang.backends.runtime_endpoint import HttpClient, sse_events
from sgl.lang.backends.srt import choice_token_logprobs
from sgl.lang.chat_template import get_chat_template, get_chat_template_by_model_path
from sgl.lang.choices import ChoicesDecision, ChoicesSamplingMethod, mean_logprob
from sgl.lang.ir import SglSamplingParams

OPENAI_URL = "https://api.openai.com/v1"
_COMPLETION_MODELS = ("gpt-3.5-turbo-instruct", "davinci-002", "babbage-002")


class OpenAI(BaseBackend):
    def __init__(self, model_name: str, base_url: str | None = None, api_key: str | None = None,
                 is_chat_model: bool | None = None, chat_template: str | None = None) -> None:
        super().__init__()
        self.model_name = model_name
        self.is_official = base_url is None
        self.base_url = (base_url or OPENAI_URL).rstrip("/")
        self.http = HttpClient(self.base_url, api_key or os.environ.get("OPENAI_API_KEY"))
        self.is_chat_model = model_name not in _COMPLETION_MODELS if is_chat_model is None else is_chat_model
        self.chat_template = (get_chat_template(chat_template) if chat_template
                              else get_chat_template_by_model_path(model_name))
        self.chat_prefix = self.chat_template.role_prefix_and_suffix["assistant"][0]

    def get_model_info(self) -> dict[str, Any]:
        return {"model_path": self.model_name, "is_chat_model": self.is_chat_model}

    # --- requests -------------------------------------------------------------------------------

    def _body(self, s: Any, params: SglSamplingParams) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model_name, **_openai_sampling(params, self.is_official)}
        if self.is_chat_model:
            if not s.text_.endswith(self.chat_prefix) or s.cur_role != "assistant":
                raise RuntimeError("with an OpenAI chat model, gen must come right after the assistant role "
                                   "begins, e.g. s += sgl.assistant(sgl.gen('answer'))")
            body["messages"] = list(s.messages_)
        else:
            body["prompt"] = s.text_
        return body

    def _route(self) -> str:
        return "/chat/completions" if self.is_chat_model else "/completions"

    def generate(self, s: Any, sampling_params: SglSamplingParams) -> tuple[Any, Any]:
        out = self.http.request("POST", self._route(), self._body(s, sampling_params)).json()
        _check_choices(out["choices"])
        texts = [_choice_text(c) for c in sorted(out["choices"], key=lambda c: c.get("index", 0))]
        usage = out.get("usage") or {}
        meta = {"id": out.get("id"), "prompt_tokens": usage.get("prompt_tokens"),
                "completion_tokens": usage.get("completion_tokens"),
                "finish_reason": out["choices"][0].get("finish_reason")}
        return (texts if len(texts) > 1 else texts[0]), meta

    def generate_stream(self, s: Any, sampling_params: SglSamplingParams) -> Iterator[tuple[str, dict]]:
        body = {**self._body(s, sampling_params), "stream": True}
        res = self.http.request("POST", self._route(), body, stream=True)
        with res:
            num_chunks = 0
            for event in sse_events(res):
                _check_choices(event.get("choices", []))
                for choice in event.get("choices", []):
                    delta = choice.get("delta", {}).get("content") if self.is_chat_model else choice.get("text")
                    if delta:
                        num_chunks += 1
                        yield delta, {"id": event.get("id"), "completion_chunks": num_chunks,
                                      "finish_reason": choice.get("finish_reason")}

    # --- select ---------------------------------------------------------------------------------

    def select(self, s: Any, choices: list[str], temperature: float,
               choices_method: ChoicesSamplingMethod) -> ChoicesDecision:
        if choices_method.requires_unconditional_logprobs:
            raise NotImplementedError(f"{choices_method!r} needs unconditional logprobs, which the "
                                      "OpenAI API does not give; use token_length_normalized")
        if self.is_chat_model:
            return self._select_by_regex(s, choices)
        return self._select_by_echo(s, choices, choices_method)

    def _select_by_regex(self, s: Any, choices: list[str]) -> ChoicesDecision:
        if self.is_official:
            raise NotImplementedError("select/choices on an OpenAI chat model is not supported by the API; "
                                      "use a completion model or a self-hosted OpenAI-compatible server")
        params = SglSamplingParams(max_new_tokens=max(64, max(len(c) for c in choices)), temperature=0.0,
                                   regex="(" + "|".join(re.escape(c) for c in choices) + ")")
        text, meta = self.generate(s, params)
        if text not in choices:
            raise RuntimeError(f"the server ignored the choices regex and answered {text!r}")
        return ChoicesDecision(text, {"method": "regex", **meta})

    def _select_by_echo(self, s: Any, choices: list[str], method: ChoicesSamplingMethod) -> ChoicesDecision:
        body = {"model": self.model_name, "prompt": [s.text_ + c for c in choices], "max_tokens": 0,
                "echo": True, "logprobs": 0, "temperature": 0}
        try:
            out = self.http.request("POST", "/completions", body).json()
        except RuntimeError as e:
            raise RuntimeError(f"select needs prompt logprobs (echo=True, logprobs) from /completions: {e}") from e
        _check_choices(out["choices"])
        rows = sorted(out["choices"], key=lambda c: c.get("index", 0))
        entries = [_echo_entries(row.get("logprobs") or {}) for row in rows]
        input_lps = [choice_token_logprobs(e, c) for e, c in zip(entries, choices)]
        return method(choices=choices, normalized_prompt_logprobs=[mean_logprob(x) for x in input_lps],
                      input_token_logprobs=input_lps, output_token_logprobs=[[] for _ in choices])


def _check_choices(choices: list[dict[str, Any]]) -> None:
    """An aborted choice (an sgl/SGLang server's finish_reason "abort") is an error, not text."""
    for choice in choices:
        if choice.get("finish_reason") == "abort":
            raise RuntimeError("request aborted by the server")


def _echo_entries(logprobs: dict[str, Any]) -> list[tuple]:
    tokens, lps = logprobs.get("tokens"), logprobs.get("token_logprobs")
    if not tokens or lps is None:
        raise RuntimeError("the server returned no prompt logprobs for echo=True")
    return [(lp, None, tok) for lp, tok in zip(lps, tokens)]


def _choice_text(choice: dict[str, Any]) -> str:
    if "message" in choice:
        return choice["message"].get("content") or ""
    return choice.get("text", "")


def _openai_sampling(params: SglSamplingParams, is_official: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"max_tokens": params.max_new_tokens, "temperature": params.temperature,
                            "top_p": params.top_p, "frequency_penalty": params.frequency_penalty,
                            "presence_penalty": params.presence_penalty, "n": params.n}
    stop = [params.stop] if isinstance(params.stop, str) else list(params.stop or [])
    if params.dtype in (int, "int", float, "float"):
        stop += [" ", "\n"]  # a number ends at whitespace, as on the native backends
    body["stop"] = stop[:4] if stop else None  # the API takes at most 4
    regex = params.resolved_regex()
    if params.json_schema is not None:
        import json
        body["response_format"] = {"type": "json_schema", "json_schema": {
            "name": "output", "schema": json.loads(params.json_schema)}}
    elif regex is not None:
        if is_official:
            raise NotImplementedError("regex/dtype-constrained gen is not supported by the OpenAI API; "
                                      "use json_schema, or a self-hosted OpenAI-compatible server")
        body["regex"] = regex
    if not is_official:  # SGLang-style extra sampling fields
        body.update(top_k=params.top_k, min_p=params.min_p, ignore_eos=params.ignore_eos,
                    min_tokens=params.min_new_tokens, stop_regex=params.stop_regex or None)
    elif params.stop_regex:
        raise NotImplementedError("stop_regex is not supported by the OpenAI API; use a "
                                  "self-hosted OpenAI-compatible server")
    return {k: v for k, v in body.items() if v is not None and not (k == "top_k" and v == -1)}
