"""Forwarding one request to a worker, with retries: a request whose worker cannot be reached,
drops the connection or answers 502/503/504 before a byte went back to the client is resent to
another worker (up to --max-retries times), so a killed worker loses no request. Streams (SSE)
pass through chunk by chunk; the worker's in-flight count drops when the stream ends."""
from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from fastapi.responses import JSONResponse, Response, StreamingResponse

from sgl.runtime.router.client import Client, Upstream, WorkerError, WorkerTimeout
from sgl.runtime.router.config import RouterArgs
from sgl.runtime.router.worker import Worker, WorkerPool

logger = logging.getLogger("sgl.router")

RETRY_STATUSES = frozenset({502, 503, 504})
WORKER_HEADER = "x-sgl-worker"  # which worker answered (for clients and tests)
_DROP_REQUEST_HEADERS = {"host", "content-length", "connection", "keep-alive", "transfer-encoding",
                         "te", "upgrade", "accept-encoding", "proxy-authorization"}

Selector = Callable[[Sequence[Worker], str], Worker]


def error_response(message: str, status: int) -> JSONResponse:
    kind = {400: "invalid_request_error", 404: "not_found_error", 503: "service_unavailable",
            504: "timeout"}.get(status, "server_error")
    return JSONResponse({"error": {"message": message, "type": kind, "param": None,
                                   "code": status}}, status_code=status)


def request_headers(headers: Any) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() not in _DROP_REQUEST_HEADERS}


class _Resend(Exception):
    """This attempt failed before anything reached the client: try another worker."""


class Lease:
    """One request counted in a worker's load until released, and in its waiting requests
    until the answer's first byte (each once)."""

    def __init__(self, worker: Worker) -> None:
        self.worker, self.is_held, self.is_waiting = worker, True, True
        worker.load += 1
        worker.num_waiting += 1
        worker.num_requests += 1

    def answered(self) -> None:
        if self.is_waiting:
            self.is_waiting = False
            self.worker.num_waiting -= 1

    def release(self) -> None:
        self.answered()
        if self.is_held:
            self.is_held = False
            self.worker.load -= 1


class Proxy:
    def __init__(self, args: RouterArgs, pool: WorkerPool, client: Client,
                 on_failure: Callable[[Worker], None]) -> None:
        self.args, self.pool, self.client = args, pool, client
        self.on_failure = on_failure  # a worker failed a request: take it out, recheck it
        self.counters: Counter[str] = Counter()  # requests_total, retries_total, ...

    async def forward(self, method: str, path: str, body: bytes | None,
                      headers: dict[str, str], text: str, select: Selector) -> Response:
        """Send to the worker `select` picks among the healthy ones not tried yet."""
        self.counters["requests_total"] += 1
        tried: set[str] = set()
        problem = "no healthy worker"
        for attempt in range(self.args.max_retries + 1):
            candidates = [w for w in self.pool.healthy() if w.url not in tried]
            if not candidates:
                break
            if attempt:
                self.counters["retries_total"] += 1
            worker = select(candidates, text)
            tried.add(worker.url)
            is_last = attempt == self.args.max_retries or len(candidates) == 1
            try:
                return await self._attempt(worker, method, path, body, headers, is_last)
            except _Resend as e:
                problem = str(e)
        self.counters["failed_total"] += 1
        return error_response(f"no worker could serve the request: {problem}", 503)

    async def _attempt(self, worker: Worker, method: str, path: str, body: bytes | None,
                       headers: dict[str, str], is_last: bool) -> Response:
        """One try on `worker`; raises _Resend when another worker should get the request
        (a 502/503/504 answer passes through when `is_last`).
        A stream's response takes over the lease and the upstream; otherwise both end here
        (also when the client went away and this was cancelled)."""
        lease, upstream, response = Lease(worker), None, None
        try:
            upstream = await self.client.open(method, worker.url + path, body, headers,
                                              self.args.request_timeout_secs)
            if upstream.status in RETRY_STATUSES and not is_last:
                raise _Resend(f"{worker.url} answered {upstream.status}")
            response = await self._respond(upstream, lease)
            return response
        except WorkerError as e:
            logger.warning("worker %s failed a request (%s); trying another", worker.url, e)
            self.on_failure(worker)
            raise _Resend(f"{worker.url}: {e}") from e
        except WorkerTimeout:
            return error_response(f"worker {worker.url} timed out", 504)
        finally:
            if not isinstance(response, StreamingResponse):
                lease.release()
                if upstream is not None:
                    await upstream.aclose()

    async def _respond(self, upstream: Upstream, lease: Lease) -> Response:
        """Read a whole body, or the first chunk of a stream; a WorkerError here can still be
        resent since nothing has reached the client yet."""
        headers = dict(upstream.headers, **{WORKER_HEADER: lease.worker.url})
        chunks = upstream.chunks()
        if not headers.get("content-type", "").startswith("text/event-stream"):
            content = b"".join([c async for c in chunks])
            return Response(content, status_code=upstream.status, headers=headers)
        first = await anext(chunks, b"")
        lease.answered()
        return StreamingResponse(self._rest(first, chunks, upstream, lease),
                                 status_code=upstream.status, headers=headers)

    async def _rest(self, first: bytes, chunks: AsyncIterator[bytes], upstream: Upstream,
                    lease: Lease) -> AsyncIterator[bytes]:
        try:
            yield first
            async for chunk in chunks:
                yield chunk
        except (WorkerError, WorkerTimeout) as e:
            # Too late to resend: part of the answer is out. End with an error event.
            logger.warning("worker %s failed mid-stream: %s", lease.worker.url, e)
            self.counters["broken_streams_total"] += 1
            message = f"worker {lease.worker.url} failed mid-stream: {e}"
            yield f"data: {json.dumps({'error': {'message': message, 'code': 502}})}\n\n".encode()
            if isinstance(e, WorkerError):
                self.on_failure(lease.worker)
        finally:
            lease.release()
            await upstream.aclose()
