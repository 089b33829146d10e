"""Public primitives of the language (SGLang's names and parameters)."""
from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from sgl.lang.backends.base import resolve_backend
from sgl.lang.choices import ChoicesSamplingMethod, token_length_normalized
from sgl.lang.function import SglFunction
from sgl.lang.global_config import global_config
from sgl.lang.ir import (
    SglExpr,
    SglExprList,
    SglGen,
    SglRoleBegin,
    SglRoleEnd,
    SglSamplingParams,
    SglSelect,
    SglSeparateReasoning,
    as_expr,
    dtype_to_regex,
)


def function(func: Callable | None = None, num_api_spec_tokens: int | None = None) -> Any:
    """Decorator: `@sgl.function` or `@sgl.function(num_api_spec_tokens=...)`."""
    if func is not None:
        return SglFunction(func, num_api_spec_tokens=num_api_spec_tokens)
    return lambda f: SglFunction(f, num_api_spec_tokens=num_api_spec_tokens)


def set_default_backend(backend: Any) -> None:
    global_config.default_backend = resolve_backend(backend) if backend is not None else None


def flush_cache(backend: Any = None) -> Any:
    backend = backend if backend is not None else global_config.default_backend
    return resolve_backend(backend).flush_cache() if backend is not None else False


def get_server_info(backend: Any = None) -> Any:
    backend = backend if backend is not None else global_config.default_backend
    return resolve_backend(backend).get_server_info() if backend is not None else None


def gen(name: str | None = None, max_tokens: int | None = None, min_tokens: int | None = None,
        n: int | None = None, stop: str | list[str] | None = None,
        stop_regex: str | list[str] | None = None, stop_token_ids: list[int] | None = None, temperature: float | None = None,
        top_p: float | None = None, top_k: int | None = None, min_p: float | None = None,
        frequency_penalty: float | None = None, presence_penalty: float | None = None,
        ignore_eos: bool | None = None, return_logprob: bool | None = None,
        logprob_start_len: int | None = None, top_logprobs_num: int | None = None,
        return_text_in_logprobs: bool | None = None, dtype: Any = None,
        choices: list[str] | None = None, choices_method: ChoicesSamplingMethod | None = None,
        regex: str | None = None, json_schema: str | dict | None = None) -> SglExpr:
    """Generate text into variable `name`. With `choices`, this is `select`."""
    if choices:
        return select(name, choices, 0.0 if temperature is None else temperature,
                      choices_method or token_length_normalized)
    for pattern in [regex] + ([stop_regex] if isinstance(stop_regex, str) else stop_regex or []):
        if pattern is not None:
            re.compile(pattern)  # fail at the call site, not deep inside the program
    if dtype is not None:
        dtype_to_regex(dtype)
    if isinstance(json_schema, dict):
        json_schema = json.dumps(json_schema)
    return SglGen(name, SglSamplingParams(
        max_new_tokens=max_tokens, min_new_tokens=min_tokens, n=n, stop=stop,
        stop_regex=stop_regex, stop_token_ids=stop_token_ids, temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
        frequency_penalty=frequency_penalty, presence_penalty=presence_penalty, ignore_eos=ignore_eos,
        return_logprob=return_logprob, logprob_start_len=logprob_start_len,
        top_logprobs_num=top_logprobs_num, return_text_in_logprobs=return_text_in_logprobs,
        dtype=dtype, regex=regex, json_schema=json_schema))


def gen_int(name: str | None = None, **kwargs: Any) -> SglExpr:
    """`gen` constrained to an integer (the value stays a string)."""
    return gen(name, dtype=int, **kwargs)


def gen_string(name: str | None = None, **kwargs: Any) -> SglExpr:
    """`gen` constrained to a double-quoted string."""
    return gen(name, dtype=str, **kwargs)


def select(name: str | None = None, choices: list[str] | None = None, temperature: float = 0.0,
           choices_method: ChoicesSamplingMethod = token_length_normalized) -> SglExpr:
    """Pick one of `choices` by scoring each with the model."""
    if not choices:
        raise ValueError("select() needs a non-empty list of choices")
    if not all(isinstance(c, str) for c in choices):
        raise TypeError("select() choices must be strings")
    return SglSelect(name, choices, temperature, choices_method)


def separate_reasoning(expr: Any = None, model_type: str | None = None) -> SglExpr:
    """Split a reasoning model's `<think>` block out of the gens in `expr` (SGLang's API):
    variable `x` keeps the answer, `x_reasoning_content` gets the reasoning. `model_type`: a
    `--reasoning-parser` name (qwen3, deepseek-r1)."""
    from sgl.runtime.reasoning_parser import PARSER_NAMES
    if model_type not in PARSER_NAMES:
        raise ValueError(f"separate_reasoning: model_type must be one of {list(PARSER_NAMES)}, "
                         f"got {model_type!r}")
    expr = as_expr(expr)
    return SglExprList([expr, SglSeparateReasoning(model_type, expr)])


def image(path: Any) -> SglExpr:
    raise NotImplementedError("sgl.image: multimodal input is not supported by sgl's runtime yet")


def video(path: Any, num_frames: int = 0) -> SglExpr:
    raise NotImplementedError("sgl.video: multimodal input is not supported by sgl's runtime yet")


def _role_common(role: str, expr: Any = None) -> SglExprList:
    inner = [] if expr is None else [as_expr(expr)]
    return SglExprList([SglRoleBegin(role), *inner, SglRoleEnd(role)])


def system(expr: Any = None) -> SglExprList:
    return _role_common("system", expr)


def user(expr: Any = None) -> SglExprList:
    return _role_common("user", expr)


def assistant(expr: Any = None) -> SglExprList:
    return _role_common("assistant", expr)


def system_begin() -> SglRoleBegin:
    return SglRoleBegin("system")


def system_end() -> SglRoleEnd:
    return SglRoleEnd("system")


def user_begin() -> SglRoleBegin:
    return SglRoleBegin("user")


def user_end() -> SglRoleEnd:
    return SglRoleEnd("user")


def assistant_begin() -> SglRoleBegin:
    return SglRoleBegin("assistant")


def assistant_end() -> SglRoleEnd:
    return SglRoleEnd("assistant")
