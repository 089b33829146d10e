"""Running a request to completion or as a server-sent-event stream, with the request aborted
(and its KV freed) as soon as the client goes away."""
from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any, AsyncIterator

from fastapi import Request
from fastapi.responses import StreamingResponse

from sgl.runtime.io_struct import RequestFailed
from sgl.runtime.server.errors import ApiError, error_body
from sgl.runtime.tokenizer_manager import RequestTimedOut

_DISCONNECT_POLL_S = 0.5


class ClientGone(Exception):
    pass


async def collect(request: Request, front: Any, obj: dict[str, Any], parsed: Any) -> list[dict]:
    """The final results of a non-streamed request. Closing the generator (on a disconnect)
    aborts the request in the scheduler."""
    async def run() -> list[dict]:
        last: list[dict] = []
        async for results in front.generate(obj, parsed):
            last = results
        return last

    return await unless_disconnected(request, run())


async def unless_disconnected(request: Request, work: Any) -> Any:
    """Await `work`, cancelling it (and raising ClientGone) as soon as the client goes away."""
    task = asyncio.ensure_future(work)
    while True:
        done, _ = await asyncio.wait({task}, timeout=_DISCONNECT_POLL_S)
        if done:
            return task.result()
        if await request.is_disconnected():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            raise ClientGone()


async def stream_results(front: Any, obj: dict[str, Any], parsed: Any
                         ) -> AsyncIterator[list[dict]]:
    """The front end's results, at most one update per `--stream-interval` (or the request's
    sampling_params.stream_interval) new tokens of a sequence (finishes always pass). Closing
    this closes the front end's generator at once, which aborts unfinished requests."""
    default = getattr(front, "stream_interval", 1)
    intervals = [r.sampling_params.stream_interval or default for r in parsed.reqs]
    sent: list[int] = []
    async with contextlib.aclosing(front.generate(obj, parsed)) as results_iter:
        async for results in results_iter:
            counts = [len(r["output_ids"]) for r in results]
            due = not sent or any(c - s >= k for c, s, k in zip(counts, sent, intervals))
            if due or any(r["meta_info"]["finish_reason"] is not None for r in results):
                sent = counts
                yield results


def sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False, separators=(',', ':'))}\n\n"


def error_event(e: Exception) -> str:
    """The final event of a stream that failed (headers are sent: the status is in-band)."""
    if isinstance(e, ApiError):
        status = e.status
    elif isinstance(e, RequestFailed):
        status = e.status_code
    else:
        status = 504 if isinstance(e, RequestTimedOut) else 500
    return sse(error_body(str(e), status))


async def sse_response(request: Request, events: AsyncIterator[str]) -> StreamingResponse:
    """The stream's headers go out with its first event: a request that fails before it (refused
    or failed by the runtime) gets its error status and body like a non-streamed one; one that
    fails later ends with an error event (`events` raise only before their first event)."""
    first = await unless_disconnected(request, events.__anext__())

    async def chained() -> AsyncIterator[str]:
        yield first
        async for event in events:
            yield event

    # On a client disconnect Starlette cancels this iterator; the cancellation reaches the front
    # end's generator, whose `finally` sends the abort.
    return StreamingResponse(chained(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def native_stream(front: Any, obj: dict[str, Any], parsed: Any) -> AsyncIterator[str]:
    """SGLang's /generate stream: one event per change of a sequence, with its cumulative text
    (and `index` when the request holds several sequences), then `data: [DONE]`."""
    sent: dict[int, tuple] = {}
    many = len(parsed.reqs) > 1
    try:
        async for results in stream_results(front, obj, parsed):
            for i, r in enumerate(results):
                finished = r["meta_info"]["finish_reason"] is not None
                key = (len(r["text"]), len(r["output_ids"]), finished)
                if sent.get(i) == key:
                    continue
                sent[i] = key
                yield sse(dict(r, index=i) if many else r)
    except Exception as e:
        if not sent:  # no headers sent yet: an error status (sse_response)
            raise
        yield error_event(e)  # headers are already sent: report in-band
    yield "data: [DONE]\n\n"
