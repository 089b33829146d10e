"""Backend for an sgl (or SGLang) server, over SGLang's native HTTP routes:
POST /generate, GET /get_model_info, POST /flush_cache, GET /get_server_info."""
from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import requests

from sgl.lang.backends.srt import Payload, SrtBackend
from sgl.lang.chat_template import get_chat_template, get_chat_template_by_model_path
from sgl.lang.global_config import global_config


class HttpClient:
    """requests with one Session per thread (Sessions are not thread-safe) and errors that carry
    the server's own message."""

    def __init__(self, base_url: str, api_key: str | None = None, verify: Any = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.verify = verify
        self._local = threading.local()

    def _session(self) -> requests.Session:
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
        return self._local.session

    def request(self, method: str, route: str, json_body: Any = None, stream: bool = False) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        url = self.base_url + route
        try:
            res = self._session().request(method, url, json=json_body, headers=headers, stream=stream,
                                          timeout=(10, global_config.request_timeout_s), verify=self.verify)
        except requests.RequestException as e:
            raise RuntimeError(f"cannot reach the server at {url}: {e}") from e
        if res.status_code != 200:
            raise RuntimeError(f"{method} {route} failed with HTTP {res.status_code}: {error_message(res)}")
        return res


def error_message(res: requests.Response) -> str:
    try:
        body = res.json()
    except ValueError:
        return res.text
    if isinstance(body, dict):
        err = body.get("error", body.get("detail", body.get("message", body)))
        if isinstance(err, dict):
            err = err.get("message", err)
        return str(err)
    return str(body)


def sse_events(res: requests.Response) -> Iterator[dict]:
    """JSON objects of a `data: ...` event stream, until `data: [DONE]`."""
    for line in res.iter_lines(decode_unicode=False):
        line = line.decode("utf-8") if isinstance(line, bytes) else line
        if not line.startswith("data:"):
            continue
        body = line[5:].strip()
        if body == "[DONE]":
            return
        event = json.loads(body)
        if isinstance(event, dict) and "error" in event:
            err = event["error"]
            raise RuntimeError(err.get("message", str(err)) if isinstance(err, dict) else str(err))
        yield event


class RuntimeEndpoint(SrtBackend):
    support_concate_and_append = False

    def __init__(self, base_url: str, api_key: str | None = None, verify: Any = None,
                 chat_template_name: str | None = None) -> None:
        super().__init__()
        self.base_url = base_url.rstrip("/")
        self.http = HttpClient(base_url, api_key, verify)
        self.model_info = self.http.request("GET", "/get_model_info").json()
        if chat_template_name:
            self.chat_template = get_chat_template(chat_template_name)
        else:
            self.chat_template = get_chat_template_by_model_path(self.model_info.get("model_path"))

    def get_model_info(self) -> dict[str, Any]:
        return self.model_info

    def get_server_info(self) -> dict[str, Any]:
        return self.http.request("GET", "/get_server_info").json()

    def flush_cache(self) -> bool:
        self.http.request("POST", "/flush_cache")
        return True

    def _send(self, data: Payload) -> dict | list:
        return self.http.request("POST", "/generate", data).json()

    def _send_stream(self, data: Payload) -> Iterator[tuple[str, dict]]:
        res = self.http.request("POST", "/generate", data, stream=True)
        sent = 0
        with res:
            for event in sse_events(res):
                text = event.get("text", "")
                # SGLang's server streams the text so far; hand out only what is new
                delta, sent = text[sent:], max(sent, len(text))
                yield delta, event.get("meta_info", {})
