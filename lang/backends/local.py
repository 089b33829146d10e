"""In-process backend over `sgl.Engine`: no HTTP, same requests as the server's /generate."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sgl.lang.backends.srt import Payload, SrtBackend
from sgl.lang.chat_template import (
    ChatTemplate,
    chat_template_from_jinja,
    get_chat_template,
    get_chat_template_by_model_path,
)

_ENGINE_KEYS = ("text", "input_ids", "sampling_params", "return_logprob", "logprob_start_len",
                "top_logprobs_num", "return_text_in_logprobs", "stream")


class LocalBackend(SrtBackend):
    """`LocalBackend(engine)` or `LocalBackend(model_path=..., **server_args)` to start one.

    Requests from concurrent program threads go straight to the engine, whose scheduler
    batches them."""

    def __init__(self, engine: Any = None, chat_template: str | None = None, **engine_kwargs: Any) -> None:
        super().__init__()
        if engine is None:
            from sgl.runtime.engine import Engine
            engine = Engine(**engine_kwargs)
            self._owns_engine = True
        else:
            self._owns_engine = False
        self.engine = engine
        self.chat_template = self._pick_chat_template(chat_template)

    def _pick_chat_template(self, name: str | None) -> ChatTemplate:
        if name is not None:
            return get_chat_template(name)
        tokenizer = getattr(self.engine, "tokenizer", None)
        derived = chat_template_from_jinja(tokenizer) if tokenizer is not None else None
        return derived or get_chat_template_by_model_path(self.get_model_name())

    def get_model_info(self) -> dict[str, Any]:
        return self.engine.get_model_info()

    def get_server_info(self) -> dict[str, Any]:
        return self.engine.get_server_info()

    def flush_cache(self) -> Any:
        return self.engine.flush_cache()

    def shutdown(self) -> None:
        if self._owns_engine:
            self.engine.shutdown()

    def _send(self, data: Payload) -> dict | list:
        return self.engine.generate(**_engine_kwargs(data))

    def _send_stream(self, data: Payload) -> Iterator[tuple[str, dict]]:
        for chunk in self.engine.generate(**_engine_kwargs(data)):
            yield chunk["text"], chunk["meta_info"]


def _engine_kwargs(data: Payload) -> dict[str, Any]:
    unknown = set(data) - set(_ENGINE_KEYS)
    if unknown:
        raise ValueError(f"unsupported request field(s) for the local engine: {sorted(unknown)}")
    kwargs = {("prompt" if k == "text" else k): v for k, v in data.items() if v is not None}
    return kwargs
