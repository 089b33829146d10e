"""Running programs: one (`run_program`), many concurrently (`run_program_batch`)."""
from __future__ import annotations

import contextvars
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import tqdm

from sgl.lang.backends.base import BaseBackend, resolve_backend
from sgl.lang.global_config import global_config
from sgl.lang.interpreter import StreamExecutor
from sgl.lang.ir import SglSamplingParams
from sgl.lang.state import ProgramState

# (backend, default sampling params) of the program running in this thread
_current_run: contextvars.ContextVar[tuple | None] = contextvars.ContextVar("sgl_run", default=None)


def current_run() -> tuple[BaseBackend, SglSamplingParams] | None:
    """Backend and default sampling params of the enclosing program, for nested sgl functions."""
    return _current_run.get()


def pick_backend(backend: Any) -> BaseBackend:
    return resolve_backend(backend if backend is not None else global_config.default_backend)


def run_program(program: Any, backend: Any, args: tuple, kwargs: dict[str, Any],
                default_sampling_para: SglSamplingParams, stream: bool,
                raise_error: bool = True) -> ProgramState:
    backend = pick_backend(backend)
    kwargs = {**kwargs, **program.bind_arguments}
    executor = StreamExecutor(backend, kwargs, default_sampling_para, stream=stream,
                              num_api_spec_tokens=program.num_api_spec_tokens)
    state = ProgramState(executor)
    if stream:
        ctx = contextvars.copy_context()
        body = threading.Thread(target=ctx.run, args=(_run_body, state, program, backend, args, kwargs, False),
                                daemon=True)
        body.start()
        executor.body_thread = body  # what state.sync() waits for besides the queue
        return state
    _run_body(state, program, backend, args, kwargs, raise_error)
    return state


def _run_body(state: ProgramState, program: Any, backend: BaseBackend, args: tuple,
              kwargs: dict[str, Any], raise_error: bool) -> None:
    executor = state.stream_executor
    token = _current_run.set((backend, executor.default_sampling_para))
    try:
        state.ret_value = program.func(state, *args, **kwargs)
    except BaseException as e:
        if raise_error:
            raise
        if executor.error_ is None:
            executor.error_ = e
    finally:
        _current_run.reset(token)
        executor.end()
    executor.sync()
    if raise_error:
        executor.check_error()


def run_program_batch(program: Any, backend: Any, batch_kwargs: list[dict[str, Any]],
                      default_sampling_para: SglSamplingParams, num_threads: Any,
                      progress_bar: bool, generator_style: bool) -> Any:
    backend = pick_backend(backend)
    if global_config.enable_precache_with_tracing and len(batch_kwargs) > 1:
        cache_program(program, backend)

    def run_one(kwargs: dict[str, Any]) -> ProgramState:
        return run_program(program, backend, (), kwargs, default_sampling_para, stream=False, raise_error=False)

    return run_many(run_one, batch_kwargs, num_threads, progress_bar, generator_style)


def run_many(run_one: Callable[[dict[str, Any]], ProgramState], batch_kwargs: list[dict[str, Any]],
             num_threads: Any, progress_bar: bool, generator_style: bool) -> Any:
    """`run_one` over a batch on a thread pool; states in input order."""
    if not batch_kwargs:
        return iter(()) if generator_style else []
    if num_threads == "auto":
        num_threads = max(64, (os.cpu_count() or 1) * 16)
    num_threads = max(1, min(int(num_threads), len(batch_kwargs)))
    # a generator submits in windows so its consumer sees results before the whole batch ends
    window = max(num_threads * 2, 64) if generator_style else len(batch_kwargs)
    states = _batch_states(run_one, batch_kwargs, num_threads, progress_bar, window)
    return states if generator_style else list(states)


def _batch_states(run_one: Callable[[dict[str, Any]], ProgramState], batch_kwargs: list[dict[str, Any]],
                  num_threads: int, progress_bar: bool, window: int) -> Iterator[ProgramState]:
    pbar = tqdm.tqdm(total=len(batch_kwargs)) if progress_bar else None

    def one(kwargs: dict[str, Any]) -> ProgramState:
        state = run_one(kwargs)
        if pbar is not None:
            pbar.update()
        return state

    try:
        with ThreadPoolExecutor(num_threads) as pool:
            for start in range(0, len(batch_kwargs), window):
                futures = [pool.submit(contextvars.copy_context().run, one, kw)
                           for kw in batch_kwargs[start:start + window]]
                for fut in futures:
                    yield fut.result()
    finally:
        if pbar is not None:
            pbar.close()


def cache_program(program: Any, backend: Any) -> str | None:
    """Cache the constant text every run of `program` starts with (found by tracing)."""
    from sgl.lang.tracer import extract_prefix_by_tracing
    backend = pick_backend(backend)
    prefix = extract_prefix_by_tracing(program, backend)
    if prefix and len(prefix) > global_config.precache_min_chars:
        backend.cache_prefix(prefix)
        return prefix
    return None
