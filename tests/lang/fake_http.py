"""A tiny HTTP server speaking SGLang's native routes and the OpenAI routes, answering from a
Python function, for testing the HTTP backends' wire format without the real server."""
from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Handler = Callable[[str, dict | None], Any]  # (route, body) -> JSON answer, or list of SSE events


class NamedEvents(list):
    """A stream in Anthropic's shape: (event name, JSON data) pairs, no `[DONE]`."""


class FakeServer:
    def __init__(self, answer: Handler, api_key: str | None = None) -> None:
        self.answer = answer
        self.api_key = api_key
        self.requests: list[tuple[str, str, dict | None, dict]] = []
        server = self

        class _Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                server._handle(self, "GET", None)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"null")
                server._handle(self, "POST", body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def _handle(self, h: BaseHTTPRequestHandler, method: str, body: dict | None) -> None:
        self.requests.append((method, h.path, body, dict(h.headers)))
        if self.api_key and h.headers.get("Authorization") != f"Bearer {self.api_key}":
            return self._send(h, 401, {"error": {"message": "invalid api key"}})
        try:
            out = self.answer(h.path, body)
        except KeyError as e:
            return self._send(h, 404, {"detail": f"no route {e}"})
        except ValueError as e:
            return self._send(h, 400, {"error": {"message": str(e)}})
        if isinstance(body, dict) and body.get("stream"):
            return self._send_events(h, out)
        self._send(h, 200, out)

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    @staticmethod
    def _send_events(h: BaseHTTPRequestHandler, events: list) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.end_headers()
        if isinstance(events, NamedEvents):
            for name, data in events:
                h.wfile.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
                h.wfile.flush()
            return
        for event in events:
            h.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
            h.wfile.flush()
        h.wfile.write(b"data: [DONE]\n\n")

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def bodies(self, path: str) -> list[dict]:
        return [b for _, p, b, _ in self.requests if p == path]
