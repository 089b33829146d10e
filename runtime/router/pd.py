"""`sgl router --pd-disaggregation --prefill URL [PORT] ... --decode URL ...`: each generation
request goes to one prefill and one decode server at once (each picked by its policy), with the
prefill's bootstrap address and a fresh room added (SGLang's bootstrap_host, bootstrap_port,
bootstrap_room). The prefill runs the prompt and sends its KV to the decode; the decode's answer
(streamed or whole) goes back to the client. The prefill is asked for a plain (unstreamed)
answer, which it gives once the KV has left: a prefill that fails or dies before the decode
answered ends the exchange with an error naming it, and closing the decode's connection makes
the decode server abort its half and free its pages (and the other way round). Nothing is
retried: a half may already hold pages for the room."""
from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from typing import Any, Optional
from urllib.parse import urlsplit

from fastapi.responses import Response, StreamingResponse

from sgl.runtime.router.app import Router
from sgl.runtime.router.client import Client, Upstream, WorkerError, WorkerTimeout
from sgl.runtime.router.config import RouterArgs
from sgl.runtime.router.proxy import WORKER_HEADER, Lease, error_response
from sgl.runtime.router.worker import Worker, WorkerPool

PREFILL_HEADER = "x-sgl-prefill-worker"  # which prefill server ran the prompt


class PDRouter(Router):
    """Decode servers are the main side (they also answer the info routes); prefill servers
    come with their bootstrap ports."""

    def __init__(self, args: RouterArgs, client: Optional[Client] = None) -> None:
        super().__init__(args, client)
        self.prefill_pool, self.prefill_policy, self.prefill_health = self._side(
            [url for url, _ in args.prefill], args.prefill_policy)
        self.bootstrap_ports = dict(args.prefill)

    def _main_side(self) -> tuple[list[str], Optional[str]]:
        return self.args.decode, self.args.decode_policy

    @property
    def checkers(self) -> list[Any]:
        return [self.prefill_health, self.health]

    @property
    def pools(self) -> list[WorkerPool]:
        return [self.prefill_pool, self.pool]

    @property
    def policies(self) -> list[Any]:
        return [self.prefill_policy, self.policy]

    async def generate(self, path: str, body: bytes, headers: dict[str, str], text: str) -> Response:
        obj = _json_object(body)
        if obj is None:  # not a JSON object: a decode server answers the 400
            return await self.proxy.forward("POST", path, body, headers, text, self.select)
        self.proxy.counters["requests_total"] += 1
        prefills, decodes = self.prefill_pool.healthy(), self.pool.healthy()
        if not prefills or not decodes:
            self.proxy.counters["failed_total"] += 1
            return error_response(f"no healthy {'prefill' if not prefills else 'decode'} server", 503)
        prefill = self.prefill_policy.select(prefills, text)
        decode = self.policy.select(decodes, text)
        obj.update(bootstrap_host=urlsplit(prefill.url).hostname,
                   bootstrap_port=self.bootstrap_ports[prefill.url],
                   bootstrap_room=random.getrandbits(63))
        return await Exchange(self, prefill, decode, path, obj, headers).run()

    def server_info(self) -> dict[str, Any]:
        info = super().server_info()
        info.update(pd_disaggregation=True, prefill_policy=self.prefill_policy.view(),
                    prefill_workers=[dict(w.view(), bootstrap_port=self.bootstrap_ports.get(w.url))
                                     for w in self.prefill_pool.all()])
        return info

    async def add_worker(self, url: str) -> Response:
        return error_response("adding workers is not supported with --pd-disaggregation", 400)

    def remove_worker(self, url: str) -> Response:
        return error_response("removing workers is not supported with --pd-disaggregation", 400)


class Exchange:
    """One request's trip through a prefill and a decode server."""

    def __init__(self, router: PDRouter, prefill: Worker, decode: Worker, path: str,
                 obj: dict[str, Any], headers: dict[str, str]) -> None:
        self.router, self.prefill, self.decode, self.path = router, prefill, decode, path
        self.obj, self.headers = obj, headers
        self.timeout_s = router.args.request_timeout_secs
        self.leases = [Lease(prefill), Lease(decode)]
        self.upstream: Optional[Upstream] = None

    async def run(self) -> Response:
        to_prefill = {k: v for k, v in self.obj.items() if k != "stream_options"}
        to_prefill["stream"] = False
        prefill = asyncio.create_task(self._call_prefill(json.dumps(to_prefill).encode()))
        decode = asyncio.create_task(self._open_decode(json.dumps(self.obj).encode()))
        response: Optional[Response] = None
        try:
            done, _ = await asyncio.wait({prefill, decode}, return_when=asyncio.FIRST_COMPLETED)
            if decode not in done and prefill.result() is not None:
                return self._failed(prefill.result())  # the decode half is cancelled below
            response = await self._respond(await decode, prefill)
            return response
        except WorkerError as e:
            self.router.health.on_request_failure(self.decode)
            return self._failed(error_response(f"decode server {self.decode.url} failed: {e}", 502))
        except WorkerTimeout:
            return self._failed(error_response(f"decode server {self.decode.url} timed out", 504))
        finally:
            if not isinstance(response, StreamingResponse):
                await self._close(prefill, decode)

    async def _call_prefill(self, body: bytes) -> Optional[Response]:
        """None once the prefill answered 200 (its KV is on the way or there); else the error
        to answer with."""
        url = self.prefill.url
        try:
            upstream = await self.router.client.open("POST", url + self.path, body, self.headers,
                                                     self.timeout_s)
            try:
                content = b"".join([c async for c in upstream.chunks()])
            finally:
                await upstream.aclose()
        except WorkerError as e:
            self.router.prefill_health.on_request_failure(self.prefill)
            return error_response(f"prefill server {url} failed: {e}", 502)
        except WorkerTimeout:
            return error_response(f"prefill server {url} timed out", 504)
        finally:
            self.leases[0].release()
        if upstream.status != 200:
            return Response(content, status_code=upstream.status, headers=upstream.headers)
        return None

    async def _open_decode(self, body: bytes) -> tuple[AsyncIterator[bytes], bytes, bool]:
        """The decode's chunks, its first bytes (a stream's first event: after the KV came
        and the first token is out) or whole body, and whether it streams."""
        self.upstream = await self.router.client.open("POST", self.decode.url + self.path, body,
                                                      self.headers, self.timeout_s)
        chunks = self.upstream.chunks()
        is_stream = self.upstream.headers.get("content-type", "").startswith("text/event-stream")
        first = await anext(chunks, b"") if is_stream else b"".join([c async for c in chunks])
        self.leases[1].answered()
        return chunks, first, is_stream

    async def _respond(self, opened: tuple[AsyncIterator[bytes], bytes, bool],
                       prefill: asyncio.Task) -> Response:
        chunks, first, is_stream = opened
        headers = dict(self.upstream.headers, **{WORKER_HEADER: self.decode.url,
                                                 PREFILL_HEADER: self.prefill.url})
        if not is_stream:
            return Response(first, status_code=self.upstream.status, headers=headers)
        return StreamingResponse(self._stream(first, chunks, prefill),
                                 status_code=self.upstream.status, headers=headers)

    async def _stream(self, first: bytes, chunks: AsyncIterator[bytes],
                      prefill: asyncio.Task) -> AsyncIterator[bytes]:
        try:
            yield first
            async for chunk in chunks:
                yield chunk
        except (WorkerError, WorkerTimeout) as e:  # part of the answer is out: end with an event
            self.router.proxy.counters["broken_streams_total"] += 1
            message = f"decode server {self.decode.url} failed mid-stream: {e}"
            yield f"data: {json.dumps({'error': {'message': message, 'code': 502}})}\n\n".encode()
        finally:
            await self._close(prefill)

    def _failed(self, response: Response) -> Response:
        self.router.proxy.counters["failed_total"] += 1
        return response

    async def _close(self, *tasks: asyncio.Task) -> None:
        """Cancel what still runs (closing a connection aborts that server's half), release."""
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.upstream is not None:
            await self.upstream.aclose()
        for lease in self.leases:
            lease.release()


def _json_object(body: bytes) -> Optional[dict[str, Any]]:
    try:
        obj = json.loads(body) if body else None
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None
