"""A stand-in sgl server for router tests: answers SGLang's routes at once (or after the body's
`delay` seconds), streams `num_chunks` SSE events `chunk_delay` apart when `stream` is set, and
records every request. Runs in a thread (`FakeWorker`) or as a process that can be SIGKILLed
(`python tests/router/fake_worker.py PORT`); `GET /records` returns what it received."""
from __future__ import annotations

import json
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

GENERATE_PATHS = ("/generate", "/v1/completions", "/v1/chat/completions")


class FakeWorker:
    def __init__(self, port: int = 0) -> None:
        self.records: list[dict[str, Any]] = []
        self.is_healthy = True
        self.is_killed = False
        self.num_flushes = 0
        self.generate_status = 200  # answer generation routes with this status
        self.extra_delay_s = 0.0    # ... after the body's delay and this many more seconds
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.httpd = _Server(("127.0.0.1", port), _Handler)
        self.httpd.worker = self  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def texts(self) -> list[str]:
        with self._lock:
            return [r["text"] for r in self.records]

    def kill(self) -> None:
        """Die like a killed process: stop listening and cut every open connection."""
        self.is_killed = True
        self.httpd.shutdown()
        self.httpd.server_close()
        with self._lock:
            for conn in self._connections:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    stop = kill


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionError)):
            super().handle_error(request, client_address)  # dropped clients are expected


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive and chunked streams, like uvicorn

    def log_message(self, *args: Any) -> None:
        pass

    @property
    def worker(self) -> FakeWorker:
        return self.server.worker  # type: ignore[attr-defined]

    def setup(self) -> None:
        super().setup()
        with self.worker._lock:
            self.worker._connections.add(self.connection)

    def do_GET(self) -> None:
        path = urlparse(self.path).path
        if path == "/health":
            self._json({} if self.worker.is_healthy else {"error": "sick"},
                       200 if self.worker.is_healthy else 503)
        elif path == "/records":
            with self.worker._lock:
                self._json(list(self.worker.records))
        elif path in ("/v1/models", "/get_model_info"):
            self._json({"object": "list", "data": [{"id": "fake-model", "object": "model"}],
                        "model_path": "fake-model"})
        elif path == "/health_generate":
            self._json({})
        else:
            self._json({"error": "not found"}, 404)

    def do_POST(self) -> None:
        url = urlparse(self.path)
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        if url.path == "/flush_cache":
            self.worker.num_flushes += 1
            return self._json({})
        if url.path == "/_set_healthy":
            self.worker.is_healthy = parse_qs(url.query)["value"][0] == "1"
            return self._json({})
        if url.path not in GENERATE_PATHS:
            return self._json({"error": "not found"}, 404)
        text = body.get("text") or body.get("prompt") or json.dumps(body.get("messages"))
        with self.worker._lock:
            self.worker.records.append({"path": url.path, "text": text, "body": body,
                                        "auth": self.headers.get("Authorization")})
        if not self._sleep(float(body.get("delay", 0)) + self.worker.extra_delay_s):
            return
        if self.worker.generate_status != 200:
            return self._json({"error": "unavailable"}, self.worker.generate_status)
        if body.get("stream"):
            return self._stream(body)
        self._json({"text": f"answer from {self.worker.url}", "worker": self.worker.url,
                    "meta_info": {"prompt_tokens": 1, "completion_tokens": 1, "cached_tokens": 0}})

    def _sleep(self, seconds: float) -> bool:
        """Sleep unless killed meanwhile; a killed worker drops the connection unanswered."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not self.worker.is_killed:
            time.sleep(0.01)
        if self.worker.is_killed:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return False
        return True

    def _stream(self, body: dict) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i in range(int(body.get("num_chunks", 3))):
            if i and not self._sleep(float(body.get("chunk_delay", 0))):
                return
            self._chunk(f"data: {json.dumps({'text': f'chunk {i}', 'sent_at': time.time()})}\n\n")
        self._chunk("data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")

    def _chunk(self, text: str) -> None:
        data = text.encode()
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _json(self, obj: Any, status: int = 200) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


if __name__ == "__main__":
    worker = FakeWorker(int(sys.argv[1]))
    print("ready", flush=True)
    threading.Event().wait()
