"""Backend for Anthropic's Messages API through the `anthropic` SDK (SGLang's `sgl.Anthropic`).
A program's roles become messages (a leading system message becomes `system`); text already
written in the open assistant turn is sent as the reply's start. The API enforces no regex,
JSON schema or dtype, and has no logprobs: such gens and `select` are refused."""
from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

from sgl.lang.backends.base import BaseBackend
from sgl.lang.backends.chat_api import import_optional, program_messages, refuse_constraints
from sgl.lang.chat_template import get_chat_template
from sgl.lang.choices import ChoicesDecision, ChoicesSamplingMethod
from sgl.lang.ir import SglSamplingParams

API = "Anthropic's Messages API"
DEFAULT_MAX_TOKENS = 128  # the API requires max_tokens; the frontend's own default


class Anthropic(BaseBackend):
    is_chat_model = True

    def __init__(self, model_name: str, *args: Any, **kwargs: Any) -> None:
        """`args`/`kwargs` go to `anthropic.Anthropic` (api_key, base_url, timeout, ...)."""
        super().__init__()
        anthropic = import_optional("anthropic", "anthropic")
        self.model_name = model_name
        self.chat_template = get_chat_template("claude")
        self.client = anthropic.Anthropic(*args, **kwargs)

    def get_model_info(self) -> dict[str, Any]:
        return {"model_path": self.model_name, "is_chat_model": True}

    def _request(self, s: Any, params: SglSamplingParams) -> dict[str, Any]:
        refuse_constraints(params, API)
        messages = program_messages(s)
        system = messages.pop(0)["content"] if messages and messages[0]["role"] == "system" else None
        body: dict[str, Any] = {"model": self.model_name, "messages": messages,
                                "max_tokens": params.max_new_tokens or DEFAULT_MAX_TOKENS}
        if system:
            body["system"] = system
        stop = [params.stop] if isinstance(params.stop, str) else list(params.stop or [])
        if stop:
            body["stop_sequences"] = stop
        sampling = {k: getattr(params, k) for k in ("temperature", "top_p", "top_k")
                    if getattr(params, k) is not None and not (k == "top_k" and params.top_k < 1)}
        # SDK releases that dropped these from create()'s signature still send them as fields
        named = inspect.signature(self.client.messages.create).parameters
        body.update({k: v for k, v in sampling.items() if k in named})
        extra = {k: v for k, v in sampling.items() if k not in named}
        if extra:
            body["extra_body"] = extra
        return body

    def generate(self, s: Any, sampling_params: SglSamplingParams) -> tuple[str, dict[str, Any]]:
        msg = self.client.messages.create(**self._request(s, sampling_params))
        text = "".join(block.text for block in msg.content if block.type == "text")
        return text, _meta(msg)

    def generate_stream(self, s: Any, sampling_params: SglSamplingParams
                        ) -> Iterator[tuple[str, dict[str, Any]]]:
        with self.client.messages.stream(**self._request(s, sampling_params)) as stream:
            for i, text in enumerate(stream.text_stream):
                yield text, {"completion_chunks": i + 1}
            final = stream.get_final_message()
        yield "", _meta(final)

    def select(self, s: Any, choices: list[str], temperature: float,
               choices_method: ChoicesSamplingMethod) -> ChoicesDecision:
        raise NotImplementedError(f"select/choices needs logprobs, which {API} does not give")


def _meta(msg: Any) -> dict[str, Any]:
    return {"id": msg.id, "prompt_tokens": msg.usage.input_tokens,
            "completion_tokens": msg.usage.output_tokens, "finish_reason": msg.stop_reason,
            "matched_stop": msg.stop_sequence}
