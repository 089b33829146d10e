"""`SglFunction`: a decorated program and the ways to run it (run, run_batch, trace, compile)."""
from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Union

from sgl.lang.ir import SglSamplingParams

StopType = Union[str, list[str], tuple]


def default_sampling_params(max_new_tokens: int = 128, min_new_tokens: int | None = None,
                            stop: StopType = (), stop_token_ids: list[int] | None = None,
                            temperature: float = 1.0, top_p: float = 1.0, top_k: int = -1,
                            min_p: float = 0.0, frequency_penalty: float = 0.0,
                            presence_penalty: float = 0.0, ignore_eos: bool = False,
                            return_logprob: bool | None = None, logprob_start_len: int | None = None,
                            top_logprobs_num: int | None = None,
                            return_text_in_logprobs: bool | None = None) -> SglSamplingParams:
    return SglSamplingParams(
        max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens, stop=stop,
        stop_token_ids=stop_token_ids, temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
        frequency_penalty=frequency_penalty, presence_penalty=presence_penalty, ignore_eos=ignore_eos,
        return_logprob=return_logprob, logprob_start_len=logprob_start_len,
        top_logprobs_num=top_logprobs_num, return_text_in_logprobs=return_text_in_logprobs)


_SAMPLING_NAMES = set(inspect.signature(default_sampling_params).parameters)


def split_sampling_kwargs(kwargs: dict[str, Any]) -> tuple[SglSamplingParams, dict[str, Any]]:
    """Separate run()'s sampling keywords from the program's own arguments."""
    sampling = {k: kwargs.pop(k) for k in list(kwargs) if k in _SAMPLING_NAMES}
    return default_sampling_params(**sampling), kwargs


class SglFunction:
    """A program: `func(s, *args)` appends expressions to the state `s`.

    `num_api_spec_tokens=N` turns on SGLang's API speculative execution on completion (non-chat)
    backends: one call of up to N tokens serves several gens while the program's constant text
    matches what was speculated (see `sgl.lang.spec_exec`)."""
    def __init__(self, func: Callable, num_api_spec_tokens: int | None = None,
                 bind_arguments: dict[str, Any] | None = None) -> None:
        self.func = func
        self.num_api_spec_tokens = num_api_spec_tokens
        self.bind_arguments = dict(bind_arguments or {})
        params = list(inspect.signature(func).parameters.values())
        if not params:
            raise TypeError(f"an sgl.function takes the program state as its first argument: {func.__name__}")
        self.arg_names = [p.name for p in params[1:]]
        self.arg_defaults = {p.name: p.default for p in params[1:] if p.default is not p.empty}
        self.__name__ = getattr(func, "__name__", "sgl_function")
        self.__doc__ = func.__doc__

    def bind(self, **kwargs: Any) -> SglFunction:
        unknown = [k for k in kwargs if k not in self.arg_names]
        if unknown:
            raise TypeError(f"{self.__name__}() has no argument(s) {unknown}")
        return SglFunction(self.func, self.num_api_spec_tokens, {**self.bind_arguments, **kwargs})

    def run(self, *args: Any, stream: bool = False, backend: Any = None, **kwargs: Any) -> Any:
        """Run once. Sampling keywords (max_new_tokens, temperature, ...) set the defaults of
        every gen in the program; the rest are the program's arguments."""
        from sgl.lang.runner import run_program
        params, kwargs = split_sampling_kwargs(kwargs)
        return run_program(self, backend, args, kwargs, params, stream)

    def run_batch(self, batch_kwargs: list, *, backend: Any = None, num_threads: str | int = "auto",
                  progress_bar: bool = False, generator_style: bool = False, **sampling: Any) -> Any:
        """Run once per item of `batch_kwargs` (dicts of arguments, or argument tuples),
        concurrently on `num_threads` threads. Returns states in order (a generator of them
        with `generator_style`). A failed program's error is on its state (`error()`,
        `sync()`); the others are unaffected."""
        from sgl.lang.runner import run_program_batch
        params, extra = split_sampling_kwargs(dict(sampling))
        if extra:
            raise TypeError(f"run_batch() got unexpected keyword(s) {sorted(extra)}")
        batch = [self._as_kwargs(item) for item in batch_kwargs]
        return run_program_batch(self, backend, batch, params, num_threads, progress_bar, generator_style)

    def _as_kwargs(self, item: Any) -> dict[str, Any]:
        if isinstance(item, dict):
            return dict(item)
        if isinstance(item, (list, tuple)) and len(item) <= len(self.arg_names):
            return dict(zip(self.arg_names, item))
        raise TypeError(f"batch item {item!r} does not match the arguments {self.arg_names}")

    def trace(self, *, backend: Any = None, **kwargs: Any) -> Any:
        from sgl.lang.tracer import trace_program
        return trace_program(self, kwargs, backend)

    def cache(self, backend: Any = None) -> None:
        from sgl.lang.runner import cache_program
        cache_program(self, backend)

    def compile(self, *, backend: Any = None) -> Any:
        from sgl.lang.compiler import compile_func
        return compile_func(self, backend)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Outside a program: `run`. Inside a running program: run as a nested program with the
        enclosing program's backend and default sampling params (keywords given here win).
        Inside a trace: trace it."""
        from sgl.lang.runner import current_run, run_program
        from sgl.lang.tracer import TracingScope
        if TracingScope.get_current_scope() is not None:
            return self.trace(**dict(zip(self.arg_names, args)), **kwargs)
        enclosing = current_run()
        if enclosing is None:
            return self.run(*args, **kwargs)
        backend, params = enclosing
        backend, stream = kwargs.pop("backend", backend), kwargs.pop("stream", False)
        sampling = {k: kwargs.pop(k) for k in list(kwargs) if k in _SAMPLING_NAMES}
        params = params.merged(SglSamplingParams(**sampling))
        return run_program(self, backend, args, kwargs, params, stream)

    def __repr__(self) -> str:
        return f"SglFunction({self.__name__})"
