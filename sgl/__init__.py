"""sgl: a frontend language for structured LLM programs.

    @sgl.function
    def qa(s, question):
        s += sgl.user(question)
        s += sgl.assistant(sgl.gen("answer", max_tokens=64))

    sgl.set_default_backend(sgl.Engine())      # or sgl.RuntimeEndpoint("http://...")
    print(qa.run(question="Why is the sky blue?")["answer"])
"""
from typing import Any

from sgl.lang.api import (
    assistant,
    assistant_begin,
    assistant_end,
    flush_cache,
    function,
    gen,
    gen_int,
    gen_string,
    get_server_info,
    image,
    select,
    separate_reasoning,
    set_default_backend,
    system,
    system_begin,
    system_end,
    user,
    user_begin,
    user_end,
    video,
)
from sgl.lang.choices import (
    greedy_token_selection,
    token_length_normalized,
    unconditional_likelihood_normalized,
)
from sgl.lang.global_config import global_config
from sgl.lang.interpreter import ProgramError
from sgl.lang.state import ProgramState

_LAZY = {
    "Engine": ("sgl.runtime.engine", "Engine"),
    "Runtime": ("sgl.runtime.server.runtime", "Runtime"),
    "LocalBackend": ("sgl.lang.backends.local", "LocalBackend"),
    "RuntimeEndpoint": ("sgl.lang.backends.runtime_endpoint", "RuntimeEndpoint"),
    "OpenAI": ("sgl.lang.backends.openai", "OpenAI"),
    "Anthropic": ("sgl.lang.backends.anthropic", "Anthropic"),
    "LiteLLM": ("sgl.lang.backends.litellm", "LiteLLM"),
    "BaseBackend": ("sgl.lang.backends.base", "BaseBackend"),
}


def __getattr__(name: str) -> Any:
    """Backends and the Engine load on first use, so `import sgl` stays light."""
    if name in _LAZY:
        import importlib
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'sgl' has no attribute {name!r}")


__all__ = [
    "assistant", "assistant_begin", "assistant_end", "flush_cache", "function", "gen", "gen_int",
    "gen_string", "get_server_info", "image", "select", "separate_reasoning", "set_default_backend", "system",
    "system_begin", "system_end", "user", "user_begin", "user_end", "video",
    "greedy_token_selection", "token_length_normalized", "unconditional_likelihood_normalized",
    "global_config", "ProgramError", "ProgramState",
    "Engine", "Runtime", "LocalBackend", "RuntimeEndpoint", "OpenAI", "Anthropic", "LiteLLM", "BaseBackend",
]
