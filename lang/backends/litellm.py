"""Backend over LiteLLM (SGLang's `sgl.LiteLLM`): any provider LiteLLM reaches, in OpenAI's chat
shape. JSON schemas go as `response_format`; regex, dtype and stop_regex go as the extra fields
sgl serve (and SGLang) read, but only to a self-hosted endpoint (`base_url`), since hosted
providers would ignore them. No logprobs: `select` is refused."""
from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, Mapping, Optional

from sgl.lang.backends.base import BaseBackend
from sgl.lang.backends.chat_api import import_optional, program_messages, refuse_constraints
from sgl.lang.chat_template import get_chat_template_by_model_path
from sgl.lang.choices import ChoicesDecision, ChoicesSamplingMethod
from sgl.lang.ir import SglSamplingParams

API = "LiteLLM"


class LiteLLM(BaseBackend):
    is_chat_model = True

    def __init__(self, model_name: str, chat_template: Any = None, api_key: Optional[str] = None,
                 organization: Optional[str] = None, base_url: Optional[str] = None,
                 timeout: Optional[float] = 600, max_retries: Optional[int] = 1,
                 default_headers: Optional[Mapping[str, str]] = None) -> None:
        super().__init__()
        self.litellm = import_optional("litellm", "litellm")
        self.model_name = model_name
        self.is_self_hosted = base_url is not None
        self.chat_template = chat_template or get_chat_template_by_model_path(model_name)
        self.client_params = {"api_key": api_key, "organization": organization,
                              "base_url": base_url, "timeout": timeout,
                              "max_retries": max_retries, "default_headers": default_headers}

    def get_model_info(self) -> dict[str, Any]:
        return {"model_path": self.model_name, "is_chat_model": True}

    def _request(self, s: Any, params: SglSamplingParams) -> dict[str, Any]:
        extra = _sgl_fields(params) if self.is_self_hosted else {}
        checked = SglSamplingParams(n=params.n) if self.is_self_hosted else params
        refuse_constraints(checked, API, allow_json_schema=True)
        body = {"model": self.model_name, "messages": program_messages(s), **self.client_params,
                "max_tokens": params.max_new_tokens, "temperature": params.temperature,
                "top_p": params.top_p, "frequency_penalty": params.frequency_penalty,
                "presence_penalty": params.presence_penalty}
        stop = [params.stop] if isinstance(params.stop, str) else list(params.stop or [])
        if self.is_self_hosted and params.dtype in (int, "int", float, "float"):
            stop += [" ", "\n"]  # a number ends at whitespace, as on the native backends
        body["stop"] = stop or None
        if params.json_schema is not None:
            body["response_format"] = {"type": "json_schema", "json_schema": {
                "name": "output", "schema": json.loads(params.json_schema)}}
        if extra:
            body["extra_body"] = extra
        return {k: v for k, v in body.items() if v is not None}

    def generate(self, s: Any, sampling_params: SglSamplingParams) -> tuple[str, dict[str, Any]]:
        res = self.litellm.completion(**self._request(s, sampling_params))
        choice = res.choices[0]
        usage = getattr(res, "usage", None)
        return choice.message.content or "", {
            "id": res.id, "finish_reason": choice.finish_reason,
            "prompt_tokens": getattr(usage, "prompt_tokens", None),
            "completion_tokens": getattr(usage, "completion_tokens", None)}

    def generate_stream(self, s: Any, sampling_params: SglSamplingParams
                        ) -> Iterator[tuple[str, dict[str, Any]]]:
        chunks = self.litellm.completion(stream=True, **self._request(s, sampling_params))
        num_chunks = 0
        for chunk in chunks:
            choice = chunk.choices[0]
            if choice.delta.content:
                num_chunks += 1
                yield choice.delta.content, {"id": chunk.id, "completion_chunks": num_chunks,
                                             "finish_reason": choice.finish_reason}

    def select(self, s: Any, choices: list[str], temperature: float,
               choices_method: ChoicesSamplingMethod) -> ChoicesDecision:
        raise NotImplementedError(f"select/choices needs logprobs, which {API} does not give")


def _sgl_fields(params: SglSamplingParams) -> dict[str, Any]:
    """Constraints as sgl serve's (and SGLang's) extra request fields."""
    fields = {"regex": params.resolved_regex(), "stop_regex": params.stop_regex}
    return {k: v for k, v in fields.items() if v}
