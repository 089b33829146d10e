"""Off-thread grammar compilation with an LRU cache, a time limit and a bounded pool.

The scheduler submits a request's grammar when it arrives and polls each step; the request
waits (without stalling the batch) until `poll` returns a Grammar, or an Exception to finish it
with. Compiles run on a few daemon worker threads (both backends release the GIL while
compiling), at the lowest CPU priority, so a pathological grammar takes spare CPU, not the
scheduler's.

A thread cannot be killed, so a compile past the limit is abandoned: its handle fails and its key
is remembered as failed (the same grammar is refused at once next time). The stuck thread is
accounted for: a replacement starts only while fewer than `max_abandoned` threads are stuck,
and a stuck thread rejoins the pool (or exits, if the pool is full) when its compile ends. So at
most `max_workers + max_abandoned` compile threads ever exist. While every thread is stuck, a job
that has waited past the limit fails too, without being remembered: the grammar is not at fault.
"""
from __future__ import annotations

import os
import queue
import sys
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass, field

from .base import Grammar, GrammarBackend

Key = tuple[str, str]
_LOWEST_PRIORITY = 19  # nice value of compile threads (Linux: per thread)


@dataclass
class _Job:
    key: Key
    future: Future = field(default_factory=Future)
    submitted_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None  # time.monotonic() when a worker picked it up
    abandoned: bool = False  # timed out while compiling: its thread is stuck


@dataclass
class GrammarHandle:
    """What `submit` returns; pass it to `poll`."""
    key: Key
    job: _Job | None
    result: Grammar | Exception | None = None


class GrammarManager:
    def __init__(self, backend: GrammarBackend, max_workers: int = 2, cache_size: int = 256,
                 timeout_s: float = 30.0, max_abandoned: int = 2) -> None:
        self.backend = backend
        self.max_workers, self.max_abandoned = max_workers, max_abandoned
        self.cache_size = cache_size
        self.timeout_s = timeout_s
        self._cache: OrderedDict[Key, Grammar | Exception] = OrderedDict()
        self._jobs: dict[Key, _Job] = {}  # queued or compiling
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self.num_workers = 0    # threads taking jobs
        self.num_abandoned = 0  # threads stuck in a compile that timed out
        with self._lock:
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

    @property
    def num_threads(self) -> int:
        """Compile threads alive or about to exit: never more than max_workers + max_abandoned."""
        return self.num_workers + self.num_abandoned

    def _check_timeouts(self) -> None:
        """Fail every job past the limit, whoever's handle is polled."""
        now = time.monotonic()
        with self._lock:
            for job in list(self._jobs.values()):
                if job.started_at is not None and now - job.started_at > self.timeout_s:
                    self._abandon(job)
                elif (job.started_at is None and self.num_workers == 0
                      and now - job.submitted_at > self.timeout_s):
                    self._jobs.pop(job.key, None)  # not cached: the grammar may be fine
                    job.future.set_exception(ValueError(
                        f"grammar compilation did not start within {self.timeout_s:g} s: "
                        "every compile worker is busy; retry later"))

    def _abandon(self, job: _Job) -> None:
        """(under the lock) Fail a compile that ran too long and account for its thread."""
        error = ValueError(f"grammar compilation timed out after {self.timeout_s:g} s")
        job.abandoned = True
        job.future.set_exception(error)
        self._finish(job.key, error)
        self.num_workers -= 1
        self.num_abandoned += 1
        if self.num_abandoned <= self.max_abandoned:
            self._start_worker()  # keep the queue moving while the stuck thread runs on

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
        """(under the lock)"""
        self.num_workers += 1
        threading.Thread(target=self._work, name="grammar-compile", daemon=True).start()

    def _work(self) -> None:  # one worker thread
        _lower_priority()
        while True:
            job = self._queue.get()
            if job is None:
                with self._lock:
                    self.num_workers -= 1
                return
            with self._lock:
                if job.future.done():  # failed in the queue
                    continue
                job.started_at = time.monotonic()
            result = self._compile(job.key)
            with self._lock:
                if not job.abandoned:
                    self._finish(job.key, result)
                    _resolve(job.future, result)
                    continue
                # timed out meanwhile (the caller got the timeout): rejoin the pool, or end
                self.num_abandoned -= 1
                if self.num_workers >= self.max_workers:
                    return
                self.num_workers += 1

    def _compile(self, key: Key) -> Grammar | Exception:
        try:
            return self.backend.compile(*key)
        except ValueError as e:
            return e
        except Exception as e:  # noqa: BLE001 - a backend bug fails the request, not the worker
            return ValueError(f"grammar compilation failed: {type(e).__name__}: {e}")


def _lower_priority() -> None:
    """Run this thread (and the threads the backend starts from it) at the lowest priority:
    on Linux a nice value belongs to a thread and its children inherit it."""
    if sys.platform.startswith("linux"):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), _LOWEST_PRIORITY)
        except OSError:
            pass


def _resolve(future: Future, result: Grammar | Exception) -> None:
    if isinstance(result, Exception):
        future.set_exception(result)
    else:
        future.set_result(result)


def _future_result(future: Future) -> Grammar | Exception:
    exc = future.exception()
    return exc if exc is not None else future.result()


def _fresh(result: Grammar | Exception) -> Grammar | Exception:
    """The cache holds never-advanced grammars; each request gets its own matcher."""
    return result.copy() if isinstance(result, Grammar) else result
