"""Fake workers and an in-process router (uvicorn in a thread) on free loopback ports."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
import uvicorn

from sgl.runtime.router.app import build_app
from sgl.runtime.router.client import make_client
from sgl.runtime.router.config import RouterArgs
from sgl.runtime.server.runtime import free_port  # noqa: F401  (the router tests import it from here)
from tests.router.fake_worker import FakeWorker

FAKE_WORKER_PY = os.path.join(os.path.dirname(__file__), "fake_worker.py")


class RouterThread:
    """The router app served by uvicorn in a daemon thread; `.router` is its live state."""

    def __init__(self, client_kind: str = "auto", **kwargs: Any) -> None:
        kwargs.setdefault("worker_startup_timeout_secs", 5.0)
        self.args = RouterArgs(port=free_port(), **kwargs)
        self.app = build_app(self.args, make_client(client_kind))
        self.router = self.app.state.router
        self.url = f"http://127.0.0.1:{self.args.port}"
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.args.port,
                                log_level="warning", timeout_graceful_shutdown=1)
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, daemon=True)
        self._thread.start()
        wait_until(lambda: self.server.started, 30, "router start")

    def post(self, path: str, body: Any = None, **kw: Any) -> requests.Response:
        kw.setdefault("timeout", 60)
        return requests.post(self.url + path, json=body, **kw)

    def get(self, path: str, **kw: Any) -> requests.Response:
        return requests.get(self.url + path, timeout=60, **kw)

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(10)


def wait_until(predicate: Callable[[], Any], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def fake_workers() -> Iterator[Callable[[int], list[FakeWorker]]]:
    made: list[FakeWorker] = []

    def make(n: int) -> list[FakeWorker]:
        made.extend(FakeWorker() for _ in range(n))
        return made[-n:]
    yield make
    for worker in made:
        if not worker.is_killed:
            worker.stop()


@pytest.fixture
def start_router() -> Iterator[Callable[..., RouterThread]]:
    made: list[RouterThread] = []

    def start(**kwargs: Any) -> RouterThread:
        made.append(RouterThread(**kwargs))
        return made[-1]
    yield start
    for router in made:
        router.stop()


@pytest.fixture
def worker_processes() -> Iterator[Callable[[int], list[tuple[str, subprocess.Popen]]]]:
    """Fake workers as processes, to be killed with SIGKILL."""
    procs: list[subprocess.Popen] = []

    def spawn(n: int) -> list[tuple[str, subprocess.Popen]]:
        out = []
        for _ in range(n):
            port = free_port()
            proc = subprocess.Popen([sys.executable, FAKE_WORKER_PY, str(port)],
                                    stdout=subprocess.PIPE, text=True)
            procs.append(proc)
            assert proc.stdout.readline().strip() == "ready"
            out.append((f"http://127.0.0.1:{port}", proc))
        return out
    yield spawn
    for proc in procs:
        proc.kill()
        proc.wait()
