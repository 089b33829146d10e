"""What one request may cost the server before any route runs: the size of its body
(--max-request-body-bytes), checked on the declared length and again on the bytes that arrive.
Pure ASGI, so streaming responses and disconnect detection pass through untouched."""
from __future__ import annotations

from typing import Any

from sgl.runtime.server.errors import ApiError


class BodyTooLarge(Exception):
    pass


class BodyLimitMiddleware:
    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        num_received = 0

        async def counting_receive() -> dict:
            # a chunked body has no length up front: count what arrives
            nonlocal num_received
            message = await receive()
            num_received += len(message.get("body", b""))
            if num_received > self.max_bytes:
                raise BodyTooLarge()
            return message

        started = False

        async def watching_send(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, watching_send)
        except BodyTooLarge:
            if not started:
                await self._refuse(scope, receive, send)

    async def _refuse(self, scope: dict, receive: Any, send: Any) -> None:
        await too_large(self.max_bytes).response()(scope, receive, send)


def too_large(max_bytes: int) -> ApiError:
    return ApiError(f"request body is larger than {max_bytes} bytes (--max-request-body-bytes)",
                    413, "body", "request_too_large")
