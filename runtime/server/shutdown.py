"""Stopping `sgl serve` on SIGTERM at every stage, cleanly.

Start-up: the first SIGTERM stops whatever the main thread is doing (SystemExit) and is also
remembered, so that a SystemExit swallowed on the way (raised inside a finalizer, say) still
stops start-up at the next checkpoint instead of letting the server come up. Children die at
once while they load (ipc.child_signals) and are reaped by ServerProcesses.shutdown.

Serving: uvicorn owns the signal. Shutdown stops accepting connections, refuses new requests
with a 503 JSON error (/health too), lets running requests drain for DRAIN_S, then ends the rest
with a 503 JSON error (a final error event when streaming): never a plain-text 500."""
from __future__ import annotations

import asyncio
import signal
import threading
from typing import Any, Optional

import uvicorn

DRAIN_S = 5.0  # how long requests in flight at SIGTERM may run on
_SHUTTING_DOWN = "the server is shutting down"


class StartupStop:
    def __init__(self) -> None:
        self.event = threading.Event()

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        first = not self.event.is_set()
        self.event.set()
        if first:
            raise SystemExit(0)

    def check(self) -> None:
        """A checkpoint: stop here if a SIGTERM came and its SystemExit was lost."""
        if self.event.is_set():
            raise SystemExit(0)


class GracefulServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, front: Any, startup_stop: StartupStop,
                 drain_s: float = DRAIN_S) -> None:
        super().__init__(config)
        self.front, self.startup_stop, self.drain_s = front, startup_stop, drain_s

    async def main_loop(self) -> None:
        if self.startup_stop.event.is_set():  # came before uvicorn took over the signal
            self.should_exit = True
        await super().main_loop()

    async def shutdown(self, sockets: Optional[list] = None) -> None:
        self.front.refuse_new(_SHUTTING_DOWN)
        timer = asyncio.get_running_loop().call_later(self.drain_s, self.front.refuse_all,
                                                      _SHUTTING_DOWN)
        try:
            await super().shutdown(sockets)
        finally:
            timer.cancel()


def uvicorn_config(app: Any, args: Any, drain_s: float = DRAIN_S) -> uvicorn.Config:
    # uvicorn cancels what still runs after timeout_graceful_shutdown (a plain-text 500): give
    # the requests failed at the end of the drain time to send their JSON errors first
    return uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level.lower(),
                          timeout_graceful_shutdown=drain_s + 5, timeout_keep_alive=5)
