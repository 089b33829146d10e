"""A deterministic in-memory backend for interpreter tests: no model, every call recorded."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from sgl.lang.backends.base import BaseBackend
from sgl.lang.chat_template import get_chat_template
from sgl.lang.choices import ChoicesDecision
from sgl.lang.ir import SglSamplingParams


def echo_reply(prompt: str, params: SglSamplingParams) -> str:
    """Default reply: the number of characters of the prompt, so every reply differs."""
    return f"<{len(prompt)}>"


class FakeBackend(BaseBackend):
    def __init__(self, reply: Callable[[str, SglSamplingParams], str] = echo_reply,
                 template: str = "chatml", delay_s: float = 0.0,
                 fail_on: str | None = None, rendezvous: int = 0) -> None:
        super().__init__()
        self.reply = reply
        self.chat_template = get_chat_template(template)
        self.delay_s = delay_s
        self.fail_on = fail_on  # raise when a prompt contains this text
        self.calls: list[tuple[str, str, Any]] = []
        self.cached: list[str] = []
        self.active = 0
        self.max_active = 0
        # With rendezvous=N, each call waits (up to 3 s) until N calls are in flight at once, so a
        # concurrency test asserts max_active == N without depending on the machine's speed.
        self.rendezvous = rendezvous
        self._lock = threading.Lock()
        self._met = threading.Condition(self._lock)

    def _enter(self, kind: str, prompt: str, extra: Any) -> None:
        with self._lock:
            self.calls.append((kind, prompt, extra))
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            self._met.notify_all()
            self._met.wait_for(lambda: self.max_active >= self.rendezvous, timeout=3.0)
        if self.fail_on is not None and self.fail_on in prompt:
            self._exit()
            raise RuntimeError(f"backend failure: prompt contains {self.fail_on!r}")
        time.sleep(self.delay_s)

    def _exit(self) -> None:
        with self._lock:
            self.active -= 1

    def generate(self, s: Any, sampling_params: SglSamplingParams) -> tuple[Any, dict]:
        self._enter("generate", s.text_, sampling_params)
        try:
            n = sampling_params.n or 1
            texts = [self.reply(s.text_, sampling_params) + ("" if n == 1 else f"#{i}") for i in range(n)]
            meta = {"prompt_tokens": len(s.text_), "completion_tokens": len(texts[0])}
            return (texts if n > 1 else texts[0]), meta
        finally:
            self._exit()

    def generate_stream(self, s: Any, sampling_params: SglSamplingParams) -> Iterator[tuple[str, dict]]:
        self._enter("generate_stream", s.text_, sampling_params)
        try:
            text = self.reply(s.text_, sampling_params)
            for i, ch in enumerate(text):
                time.sleep(self.delay_s)
                yield ch, {"completion_tokens": i + 1}
        finally:
            self._exit()

    def select(self, s: Any, choices: list[str], temperature: float, choices_method: Any) -> ChoicesDecision:
        self._enter("select", s.text_, list(choices))
        try:
            best = max(choices, key=len)  # the longest choice wins
            return ChoicesDecision(best, {"scores": [len(c) for c in choices]})
        finally:
            self._exit()

    def cache_prefix(self, prefix_str: str) -> None:
        self.cached.append(prefix_str)

    def commit_lazy_operations(self, s: Any) -> None:
        self.calls.append(("commit", s.text_, None))

    def kinds(self) -> list[str]:
        return [c[0] for c in self.calls]
