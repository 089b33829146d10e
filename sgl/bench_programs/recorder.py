"""A backend that sends every request through the real one and records it: the payload, which
program sent it, when it left and when its answer came back. The programs run unchanged on it;
what it records is what the optimum is computed from and what the independent-calls baseline
replays."""
from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sgl.lang.backends.srt import Payload, SrtBackend

PRECACHE = -1  # the program index of requests no program sent (run_batch's prefix precache)


@dataclass
class Call:
    program: int
    payload: Payload
    results: list[dict[str, Any]]  # one per prompt of the payload
    t_send: float
    t_done: float

    @property
    def is_cache_fill(self) -> bool:
        """A request that computes nothing a caller reads: it only puts a prefix in the cache
        (`cache_prefix`, and `select`'s prompt before its choices are scored)."""
        sampling = self.payload.get("sampling_params") or {}
        return sampling.get("max_new_tokens") == 0 and not self.payload.get("return_logprob")


class RecordingBackend(SrtBackend):
    def __init__(self, inner: SrtBackend) -> None:
        super().__init__()
        self.inner = inner
        self.chat_template = inner.get_chat_template()
        self.calls: list[Call] = []
        self._lock = threading.Lock()
        self._sender = threading.local()  # the program this thread is running a call for
        self._programs: dict[int, int] = {}  # id(a program's arguments dict) -> program index
        self._arguments: list[dict] = []  # keeps those dicts alive, so no id is reused

    def reset(self) -> list[Call]:
        """Forget what was recorded (returned) and which programs were seen."""
        with self._lock:
            calls, self.calls = self.calls, []
            self._programs, self._arguments = {}, []
        return calls

    # -- which program is calling -------------------------------------------------------------
    def _program_of(self, s: Any) -> int:
        # One dict of arguments per program run, shared by the executors of its fork branches.
        key = id(s.arguments)
        with self._lock:
            if key not in self._programs:
                self._programs[key] = len(self._arguments)
                self._arguments.append(s.arguments)
            return self._programs[key]

    def _as_program(self, s: Any, fn: Any, *args: Any) -> Any:
        self._sender.program = self._program_of(s)
        try:
            return fn(s, *args)
        finally:
            self._sender.program = PRECACHE

    def generate(self, s: Any, sampling_params: Any) -> tuple[Any, Any]:
        return self._as_program(s, super().generate, sampling_params)

    def generate_stream(self, s: Any, sampling_params: Any) -> Iterator[tuple[str, dict]]:
        raise NotImplementedError("the recording backend runs programs without streaming")

    def select(self, s: Any, choices: list[str], temperature: float, choices_method: Any) -> Any:
        return self._as_program(s, super().select, choices, temperature, choices_method)

    def commit_lazy_operations(self, s: Any) -> None:
        self._as_program(s, super().commit_lazy_operations)

    # -- sending --------------------------------------------------------------------------------
    def _send(self, data: Payload) -> dict | list:
        program = getattr(self._sender, "program", PRECACHE)
        t_send = time.perf_counter()
        out = self.inner._send(data)
        t_done = time.perf_counter()
        results = out if isinstance(out, list) else [out]
        with self._lock:
            self.calls.append(Call(program, data, results, t_send, t_done))
        return out

    # -- the rest goes to the real backend ------------------------------------------------------
    def get_model_info(self) -> dict[str, Any]:
        return self.inner.get_model_info()

    def get_server_info(self) -> dict[str, Any]:
        return self.inner.get_server_info()

    def flush_cache(self) -> Any:
        return self.inner.flush_cache()
