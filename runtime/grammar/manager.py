"""Off-thread grammar compilation with an LRU cache and a time limit.

The scheduler submits a request's grammar when it arrives and polls each step; the request
waits (without stalling the batch) until `poll` returns a Grammar, or an Exception to finish it
with. Compiles run on daemon worker threads (both backends release the GIL while compiling). A
thread cannot be killed, so a compile past the limit is abandoned: its handle fails, its key is
remembered as failed, and a fresh worker takes its place so the queue keeps moving.
"""
from __future__ import annotations

import queue
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass, field

from .base import Grammar, GrammarBackend

Key = tuple[str, str]


@dataclass
class _Job:
    key: Key
    future: Future = field(default_factory=Future)
    started_at: float | None = None  # time.monotonic() when a worker picked it up


@dataclass
class GrammarHandle:
    """What `submit` returns; pass it to `poll`."""
    key: Key
    job: _Job | None
    result: Grammar | Exception | None = None


class GrammarManager:
    def __init__(self, backend: GrammarBackend, max_workers: int = 1, cache_size: int = 256,
                 timeout_s: float = 30.0) -> None:
        self.backend = backend
        self.max_workers = max_workers
        self.cache_size = cache_size
        self.timeout_s = timeout_s
        self._cache: OrderedDict[Key, Grammar | Exception] = OrderedDict()
        self._jobs: dict[Key, _Job] = {}  # in flight
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        for _ in range(max_workers):
            self._start_worker()

    def submit(self, kind: str, text: str) -> GrammarHandle:
        """Start compiling (kind, text) unless it is cached or already in flight."""
        key = (kind, text)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
            else:
                job = self._jobs.get(key)
                if job is None:
                    job = self._jobs[key] = _Job(key)
                    self._queue.put(job)
        if cached is not None:
            return GrammarHandle(key, None, _fresh(cached))
        return GrammarHandle(key, job)

    def poll(self, handle: GrammarHandle) -> Grammar | Exception | None:
        """A Grammar in its initial state (each handle gets its own copy), the ValueError that
        compilation raised or timed out with, or None while still compiling."""
        if handle.result is None:
            self._check_timeouts()
            if handle.job.future.done():
                handle.result = _fresh(_future_result(handle.job.future))
        return handle.result

    def get(self, kind: str, text: str, poll_interval_s: float = 0.001) -> Grammar:
        """Blocking convenience for tests and offline use; raises the compile error."""
        handle = self.submit(kind, text)
        while (result := self.poll(handle)) is None:
            time.sleep(poll_interval_s)
        if isinstance(result, Exception):
            raise result
        return result

    def _check_timeouts(self) -> None:
        """Abandon every running compile past the limit, whoever's handle is polled."""
        now = time.monotonic()
        with self._lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            if job.started_at is not None and now - job.started_at > self.timeout_s:
                self._abandon(job)

    def _abandon(self, job: _Job) -> None:
        error = ValueError(f"grammar compilation timed out after {self.timeout_s:g} s")
        with self._lock:
            if job.future.done():
                return
            job.future.set_exception(error)
            self._finish(job.key, error)
        self._start_worker()  # the stuck thread keeps running; replace it

    def _finish(self, key: Key, result: Grammar | Exception) -> None:
        """Record a result (under the lock)."""
        self._jobs.pop(key, None)
        self._cache[key] = result
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def shutdown(self) -> None:
        """Let the idle workers exit (a compile in progress finishes first)."""
        for _ in range(self.max_workers):
            self._queue.put(None)

    def _start_worker(self) -> None:
        threading.Thread(target=self._work, name="grammar-compile", daemon=True).start()

    def _work(self) -> None:  # one worker thread
        while True:
            job = self._queue.get()
            if job is None:
                return
            if job.future.done():  # abandoned before it started
                continue
            job.started_at = time.monotonic()
            try:
                result: Grammar | Exception = self.backend.compile(*job.key)
            except ValueError as e:
                result = e
            except Exception as e:  # noqa: BLE001 - a backend bug fails the request, not the worker
                result = ValueError(f"grammar compilation failed: {type(e).__name__}: {e}")
            with self._lock:
                if job.future.done():  # timed out meanwhile: the caller got the timeout
                    return  # this thread was replaced; let it end
                self._finish(job.key, result)
                if isinstance(result, Exception):
                    job.future.set_exception(result)
                else:
                    job.future.set_result(result)


def _future_result(future: Future) -> Grammar | Exception:
    exc = future.exception()
    return exc if exc is not None else future.result()


def _fresh(result: Grammar | Exception) -> Grammar | Exception:
    """The cache holds never-advanced grammars; each request gets its own matcher."""
    return result.copy() if isinstance(result, Grammar) else result
