"""The interface every backend implements. The interpreter calls these with its executor `s`
(reading `s.text_` and `s.messages_`); backends never touch interpreter internals beyond that."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sgl.lang.chat_template import ChatTemplate, get_chat_template
from sgl.lang.choices import ChoicesDecision, ChoicesSamplingMethod
from sgl.lang.ir import SglSamplingParams


class BaseBackend:
    #: chat-only backends (OpenAI chat) need `gen` right after an assistant role begins
    is_chat_model = False
    support_concate_and_append = False

    def __init__(self) -> None:
        self.chat_template: ChatTemplate = get_chat_template("default")

    def get_model_name(self) -> str:
        return self.get_model_info().get("model_path", "")

    def get_model_info(self) -> dict[str, Any]:
        return {}

    def get_chat_template(self) -> ChatTemplate:
        return self.chat_template

    def get_server_info(self) -> dict[str, Any]:
        raise NotImplementedError(f"{type(self).__name__} has no server info")

    def cache_prefix(self, prefix_str: str) -> None:
        """Make the backend keep `prefix_str` in its prefix cache (no-op where there is none)."""

    def flush_cache(self) -> Any:
        """Drop the backend's prefix cache."""

    def commit_lazy_operations(self, s: Any) -> None:
        """Process `s.text_` so far (no output), so forks of `s` share its cached prefix."""
        self.cache_prefix(s.text_)

    def generate(self, s: Any, sampling_params: SglSamplingParams) -> tuple[Any, dict[str, Any]]:
        """Continue `s`: returns (text, or a list of n texts; meta_info)."""
        raise NotImplementedError

    def generate_stream(self, s: Any, sampling_params: SglSamplingParams) -> Iterator[tuple[str, dict[str, Any]]]:
        """Continue `s`, yielding (new text since the last chunk, meta_info so far)."""
        raise NotImplementedError

    def select(self, s: Any, choices: list[str], temperature: float,
               choices_method: ChoicesSamplingMethod) -> ChoicesDecision:
        raise NotImplementedError

    def shutdown(self) -> None:
        pass


def resolve_backend(backend: Any | None) -> BaseBackend:
    """Accept a backend, an `sgl.Engine` (wrapped once in a LocalBackend), an `sgl.Runtime`
    (wrapped once in a RuntimeEndpoint to its URL), or anything with an `.endpoint` backend."""
    if backend is None:
        raise ValueError("no backend: pass backend=... or call sgl.set_default_backend(...)")
    if isinstance(backend, BaseBackend):
        return backend
    if hasattr(backend, "endpoint"):
        return resolve_backend(backend.endpoint)
    wrapped = getattr(backend, "_sgl_lang_backend", None)
    if wrapped is None:
        wrapped = _wrap(backend)
        backend._sgl_lang_backend = wrapped
    return wrapped


def _wrap(backend: Any) -> BaseBackend:
    if hasattr(backend, "generate") and hasattr(backend, "tokenizer"):
        from sgl.lang.backends.local import LocalBackend
        return LocalBackend(backend)
    if hasattr(backend, "url") and hasattr(backend, "server_args"):
        from sgl.lang.backends.runtime_endpoint import RuntimeEndpoint
        return RuntimeEndpoint(backend.url, api_key=getattr(backend.server_args, "api_key", None))
    raise TypeError(f"not a backend: {type(backend).__name__}")
