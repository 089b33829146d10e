"""One error shape on every route, OpenAI's:
`{"error": {"message", "type", "param", "code"}}`. Bad input is a 400 that names the field."""
from __future__ import annotations

import json
import re
from typing import Any, Optional

from fastapi import Request
from fastapi.responses import JSONResponse

from sgl.runtime.request_fields import KNOWN
from sgl.runtime.sampling.params import SamplingParams

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
          405: "invalid_request_error", 413: "invalid_request_error", 503: "service_unavailable",
          504: "timeout_error"}
_REQUEST_FIELDS = ("input_ids", "text", "sampling_params", "return_logprob", "logprob_start_len",
                   "top_logprobs_num", "return_text_in_logprobs", "stream", "rid", "priority",
                   "return_hidden_states", "dimensions", *sorted(KNOWN))
_SAMPLING_FIELDS = tuple(SamplingParams.__dataclass_fields__)


class ApiError(Exception):
    def __init__(self, message: str, status: int = 400, param: Optional[str] = None,
                 code: Optional[str] = None, headers: Optional[dict[str, str]] = None) -> None:
        super().__init__(message)
        self.message, self.status, self.param = message, status, param
        self.code = code if code is not None else status
        self.headers = headers

    def response(self) -> JSONResponse:
        return JSONResponse(error_body(self.message, self.status, self.param, self.code),
                            status_code=self.status, headers=self.headers)


def error_body(message: str, status: int = 400, param: Optional[str] = None,
               code: Any = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": _TYPES.get(status, "server_error"),
                      "param": param, "code": code if code is not None else status}}


def from_value_error(e: ValueError, aliases: Optional[dict[str, str]] = None) -> ApiError:
    """A ValueError from request parsing -> 400 naming the field. `aliases` renames internal
    names (`sampling_params.max_new_tokens`) to the route's own (`max_tokens`)."""
    message = str(e)
    param = guess_param(message)
    for internal, public in (aliases or {}).items():
        ends_in_word = re.match(r"\w", internal[-1]) is not None
        pattern = r"\b" + re.escape(internal) + (r"\b" if ends_in_word else "")
        message = re.sub(pattern, public, message)
        param = re.sub(pattern, public, param) if param else param
    return ApiError(message, 400, param)


def guess_param(message: str) -> Optional[str]:
    m = re.search(r"sampling_params\.(\w+)", message)
    if m:
        return f"sampling_params.{m.group(1)}"
    known = {*_REQUEST_FIELDS, *_SAMPLING_FIELDS}
    return next((w for w in re.findall(r"[a-z_]+", message) if w in known), None)


async def read_json(request: Request) -> dict[str, Any]:
    body = await request.body()
    if not body.strip():
        raise ApiError("request body is empty; send a JSON object", param="body")
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(f"malformed JSON in request body: {e}", param="body") from None
    except RecursionError:
        raise ApiError("request body is nested too deeply", param="body") from None
    _check_surrogates(obj)
    if not isinstance(obj, dict):
        raise ApiError(f"request body must be a JSON object, got {type(obj).__name__}",
                       param="body")
    return obj


_SCALARS = (int, float, bool, type(None))


def _check_surrogates(obj: Any, path: str = "body") -> None:
    """JSON may escape a lone UTF-16 surrogate (`"\\ud800"`), which no tokenizer, encoder or
    grammar can take: refuse it here, naming the field, rather than fail deep in a route."""
    stack = [(obj, path)]
    while stack:  # iterative: the depth is the client's to choose
        value, where = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise ApiError(f"{where}: a string holds a lone UTF-16 surrogate, which is not "
                               "valid Unicode", param=where) from None
        elif isinstance(value, dict):
            stack += [(k, where) for k in value]
            stack += [(v, f"{where}.{k}" if where != "body" else str(k)) for k, v in value.items()]
        elif isinstance(value, list):
            stack += [(v, f"{where}[{i}]") for i, v in enumerate(value) if not isinstance(v, _SCALARS)]


def pydantic_error(e: Any) -> ApiError:
    """The first problem of a pydantic ValidationError, as `field.path: what is wrong`."""
    err = e.errors()[0]
    loc = ".".join(str(x) for x in err.get("loc", ()) if _is_field(x))
    detail = err.get("msg", "invalid value")
    if "input" in err and err.get("type") != "missing":
        detail += f" (got {_short(err['input'])})"
    more = len(e.errors()) - 1
    suffix = f"; and {more} more problem(s)" if more else ""
    return ApiError(f"{loc or 'body'}: {detail}{suffix}", 400, loc or None)


def _is_field(part: Any) -> bool:
    """Drop what pydantic adds to a location: union member tags (`str`, `list[int]`), `body`."""
    if isinstance(part, int):
        return True
    return bool(re.fullmatch(r"[A-Za-z_]\w*", str(part))) and part not in _TYPE_TAGS


_TYPE_TAGS = {"body", "str", "int", "float", "bool", "list", "dict"}


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 80 else text[:77] + "..."
