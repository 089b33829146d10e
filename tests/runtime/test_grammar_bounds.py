"""Grammar compiles are bounded (issue #23): stuck compiles cannot multiply threads, a failure
is remembered, and pathological schemas compiling in the background do not slow the requests
beside them (compile threads run at the lowest CPU priority)."""
from __future__ import annotations

import json
import statistics
import sys
import threading
import time

import pytest

from sgl.runtime.engine import Engine
from sgl.runtime.grammar import GrammarManager
from sgl.runtime.grammar.base import GrammarBackend
from sgl.runtime.io_struct import RequestFailed
from tests.runtime.test_grammar import backends, tok  # noqa: F401 (fixtures)


class StuckBackend(GrammarBackend):
    """Every grammar whose text starts with 'stuck' blocks until `release` is set."""

    def __init__(self, inner: GrammarBackend) -> None:
        self.inner, self.name = inner, "stuck"
        self.release, self.calls = threading.Event(), []

    def _compile(self, kind, text):
        self.calls.append(text)
        if text.startswith("stuck"):
            self.release.wait(60)
            raise ValueError("finally compiled")
        return self.inner.compile(kind, text)


def _compile_threads(before: frozenset[threading.Thread] = frozenset()) -> int:
    """Live compile threads, less those in `before` (other engines of this pytest process)."""
    return sum(t.name == "grammar-compile" and t.is_alive() and t not in before
               for t in threading.enumerate())


def _compile_thread_nice_values() -> set[int]:
    """The nice values of this process's live compile threads (/proc/self/task/ID/stat field 19)."""
    ids = [t.native_id for t in threading.enumerate() if t.name == "grammar-compile" and t.is_alive()]
    return {int(open(f"/proc/self/task/{i}/stat").read().rsplit(")", 1)[1].split()[16]) for i in ids}


def _wait(manager: GrammarManager, handle, timeout_s: float = 60.0):
    # generous: nice-19 compile threads get little CPU on a loaded machine
    deadline = time.monotonic() + timeout_s
    while (result := manager.poll(handle)) is None:
        assert time.monotonic() < deadline, "no result in time"
        time.sleep(0.01)
    return result


def test_stuck_compiles_keep_the_threads_bounded(backends):  # noqa: F811
    backend = StuckBackend(backends["xgrammar"])
    before = _compile_threads()
    manager = GrammarManager(backend, max_workers=2, timeout_s=0.2, max_abandoned=2)
    try:
        _check_stuck_then_released(backend, manager, before)
    finally:
        backend.release.set()  # never leave blocked threads to later tests
        manager.shutdown()


def _check_stuck_then_released(backend: StuckBackend, manager: GrammarManager, before: int) -> None:
    handles = [manager.submit("regex", f"stuck{i}") for i in range(6)]
    results = [_wait(manager, h) for h in handles]
    assert all(isinstance(r, ValueError) for r in results)
    timed_out = [r for r in results if "timed out" in str(r)]
    busy = [r for r in results if "did not start" in str(r)]
    assert len(timed_out) == 4 and len(busy) == 2  # 2 workers + 2 replacements, then none free
    assert manager.num_threads == 4 and _compile_threads() - before <= 4
    # a timed-out grammar is refused at once, without compiling again
    num_calls = len(backend.calls)
    assert "timed out" in str(manager.poll(manager.submit("regex", "stuck0")))
    assert len(backend.calls) == num_calls
    # the stuck threads end: two rejoin the pool, the others exit; the queue moves again
    backend.release.set()
    deadline = time.monotonic() + 60
    while (manager.num_abandoned or _compile_threads() - before > 2) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert manager.num_abandoned == 0 and manager.num_workers == 2
    assert _compile_threads() - before == 2
    assert not isinstance(_wait(manager, manager.submit("regex", "[0-9]+")), Exception)
    assert "did not start" not in str(_wait(manager, manager.submit("regex", "stuck5")))


def _big_schema(prefix: str, num_properties: int = 1500) -> str:
    """xgrammar needs tens of seconds of CPU for this many optional properties."""
    props = {f"{prefix}{i}": {"type": "string"} for i in range(num_properties)}
    return json.dumps({"type": "object", "properties": props})


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread priority is Linux's")
def test_pathological_schemas_do_not_slow_other_requests():
    healthy = {"max_new_tokens": 6, "temperature": 0, "ignore_eos": True}
    before = frozenset(threading.enumerate())  # engines of other tests in this worker
    with Engine(grammar_compile_timeout=2.0) as engine:
        def timed() -> float:
            start = time.perf_counter()
            engine.generate("The capital of France is", healthy)
            return time.perf_counter() - start

        timed()  # warm-up
        base = statistics.median(timed() for _ in range(3))
        errors: list[RequestFailed] = []

        def compile_too_long(prefix: str) -> None:
            try:
                engine.generate("{", {"max_new_tokens": 4, "json_schema": _big_schema(prefix)})
            except RequestFailed as e:  # a timed-out compile fails its request
                errors.append(e)

        bad = [threading.Thread(target=compile_too_long, args=(p,)) for p in "ab"]
        for t in bad:
            t.start()
        time.sleep(0.5)  # both compiling
        assert _compile_thread_nice_values() == {19}
        loaded = statistics.median(timed() for _ in range(3))
        for t in bad:
            t.join(30)
        assert len(errors) == 2
        for e in errors:
            assert "timed out after 2 s" in str(e)
        # At normal priority the two compiles made these requests 3-4x slower on 2 cores; at
        # nice 19 they were not slower on a quiet machine. The bound leaves room for the other
        # tests' processes (pytest-xdist), and the priority itself is checked below.
        assert loaded < 2.5 * base + 0.5, (base, loaded)
        assert _compile_threads(before) <= 4
