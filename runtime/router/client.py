"""The router's HTTP client to its workers, behind one small interface so the proxy does not
care which library speaks HTTP: httpx (or its fork httpx2) when installed, else `requests` run
in a thread pool. Transport failures come out as `WorkerError` (the worker is unreachable or
dropped the connection: safe to resend elsewhere before anything reached the client) or
`WorkerTimeout` (the worker is alive but too slow: not resent)."""
from __future__ import annotations

import asyncio
import contextlib
import importlib
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

CONNECT_TIMEOUT_S = 10.0
# Below the servers' keep-alive (uvicorn: 5 s), so a pooled connection is never reused just as
# the worker closes it, which would look like a dead worker.
KEEPALIVE_EXPIRY_S = 2.0
_DROP_RESPONSE_HEADERS = {"content-length", "transfer-encoding", "connection", "keep-alive",
                          "content-encoding", "date", "server"}


class WorkerError(Exception):
    pass


class WorkerTimeout(Exception):
    pass


class Upstream(Protocol):
    """A worker's response, headers received, body not yet read."""
    status: int
    headers: dict[str, str]  # end-to-end headers only; the body comes decoded

    def chunks(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...


class Client(Protocol):
    async def open(self, method: str, url: str, body: bytes | None, headers: dict[str, str],
                   timeout_s: float) -> Upstream: ...

    async def probe(self, url: str, timeout_s: float) -> bool: ...

    async def aclose(self) -> None: ...


def make_client(kind: str = "auto") -> Client:
    """kind: auto (httpx, httpx2, then requests), httpx, httpx2 or requests."""
    for name in (("httpx", "httpx2") if kind == "auto" else (kind,)):
        if name == "requests":
            return ThreadedClient()
        try:
            return HttpxClient(importlib.import_module(name))
        except ImportError:
            if kind != "auto":
                raise
    return ThreadedClient()


def _response_headers(items: Any) -> dict[str, str]:
    return {k.lower(): v for k, v in items if k.lower() not in _DROP_RESPONSE_HEADERS}


class HttpxClient:
    def __init__(self, httpx: Any) -> None:
        self.httpx = httpx
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=64,
                              keepalive_expiry=KEEPALIVE_EXPIRY_S)
        self._client = httpx.AsyncClient(limits=limits, timeout=None, trust_env=False)

    async def open(self, method: str, url: str, body: bytes | None, headers: dict[str, str],
                   timeout_s: float) -> Upstream:
        timeout = self.httpx.Timeout(timeout_s, connect=min(timeout_s, CONNECT_TIMEOUT_S))
        request = self._client.build_request(method, url, content=body, headers=headers,
                                             timeout=timeout)
        with _httpx_errors(self.httpx):
            response = await self._client.send(request, stream=True)
        return _HttpxUpstream(self, response)

    async def probe(self, url: str, timeout_s: float) -> bool:
        try:
            response = await self._client.get(url, timeout=timeout_s)
            return response.status_code == 200
        except self.httpx.HTTPError:
            return False

    async def aclose(self) -> None:
        await self._client.aclose()


@contextlib.contextmanager
def _httpx_errors(h: Any) -> Iterator[None]:
    """httpx exceptions -> WorkerError / WorkerTimeout."""
    try:
        yield
    except (h.ConnectTimeout, h.PoolTimeout) as e:
        raise WorkerError(f"cannot connect: {e!r}") from e
    except h.TimeoutException as e:
        raise WorkerTimeout(str(e) or "timed out") from e
    except (h.TransportError, h.StreamError) as e:
        raise WorkerError(str(e) or repr(e)) from e


class _HttpxUpstream:
    def __init__(self, client: HttpxClient, response: Any) -> None:
        self._client, self._response = client, response
        self.status = response.status_code
        self.headers = _response_headers(response.headers.items())

    async def chunks(self) -> AsyncIterator[bytes]:
        with _httpx_errors(self._client.httpx):
            async for chunk in self._response.aiter_bytes():
                if chunk:
                    yield chunk

    async def aclose(self) -> None:
        await self._response.aclose()


class ThreadedClient:
    """`requests` in a thread pool of its own (the loop's default pool is a few threads, and
    every in-flight request holds one)."""

    def __init__(self, max_threads: int = 512) -> None:
        import requests
        self.requests = requests
        self._session = requests.Session()
        self._session.trust_env = False
        adapter = requests.adapters.HTTPAdapter(pool_connections=16, pool_maxsize=max_threads)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._pool = ThreadPoolExecutor(max_threads, thread_name_prefix="sgl-router-http")

    async def run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def open(self, method: str, url: str, body: bytes | None, headers: dict[str, str],
                   timeout_s: float) -> Upstream:
        def send() -> Any:
            return self._session.request(method, url, data=body, headers=headers, stream=True,
                                         timeout=(min(timeout_s, CONNECT_TIMEOUT_S), timeout_s))
        response = await self._call(send)
        return _ThreadedUpstream(self, response)

    async def probe(self, url: str, timeout_s: float) -> bool:
        try:
            response = await self.run(lambda: self._session.get(url, timeout=timeout_s))
            response.close()
            return response.status_code == 200
        except self.requests.RequestException:
            return False

    async def aclose(self) -> None:
        self._session.close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _call(self, fn: Any, *args: Any) -> Any:
        r = self.requests
        try:
            return await self.run(fn, *args)
        except r.exceptions.ConnectTimeout as e:
            raise WorkerError(f"cannot connect: {e!r}") from e
        except r.exceptions.Timeout as e:
            raise WorkerTimeout(str(e)) from e
        except r.RequestException as e:
            raise WorkerError(str(e)) from e


class _ThreadedUpstream:
    def __init__(self, client: ThreadedClient, response: Any) -> None:
        self._client, self._response = client, response
        self.status = response.status_code
        self.headers = _response_headers(response.headers.items())

    async def chunks(self) -> AsyncIterator[bytes]:
        # chunk_size=None: each transfer chunk as it arrives (SSE events stay prompt)
        it = self._response.iter_content(chunk_size=None)
        while True:
            chunk = await self._client._call(next, it, None)
            if chunk is None:
                return
            if chunk:
                yield chunk

    async def aclose(self) -> None:
        await self._client.run(self._response.close)
