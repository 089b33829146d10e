"""Embedding routes of a server started with --is-embedding: SGLang's native `/encode` (text or
input_ids, one or a batch -> {"embedding", "meta_info"} per prompt) and OpenAI's `/v1/embeddings`
(input: a string, a list of strings, a list of token ids or a list of such lists;
encoding_format "float" or "base64", the little-endian float32 bytes the openai client asks for
by default). Both take `dimensions` for a Matryoshka-trained model (runtime/matryoshka.py)."""
from __future__ import annotations

import base64
import struct
from typing import Any

from fastapi import FastAPI, Request

from sgl.runtime.server.errors import ApiError, from_value_error, read_json
from sgl.runtime.server.streaming import collect

_OPENAI_FIELDS = {"input", "model", "encoding_format", "dimensions", "user"}


def add_embedding_routes(app: FastAPI, ctx: Any) -> None:
    front = ctx.front

    @app.post("/encode")
    async def encode(request: Request) -> Any:
        obj = await read_json(request)
        results = await _run(request, front, obj)
        is_batch = isinstance(obj.get("text"), list) or _is_id_batch(obj.get("input_ids"))
        return results if is_batch else results[0]

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> dict[str, Any]:
        body = await read_json(request)
        obj, encoding = _native_request(body)
        results = await _run(request, front, obj, aliases={"text": "input", "input_ids": "input"})
        data = [{"object": "embedding", "index": i, "embedding": _encode_vector(r["embedding"], encoding)}
                for i, r in enumerate(results)]
        num_tokens = sum(r["meta_info"]["prompt_tokens"] for r in results)
        return {"object": "list", "data": data, "model": body.get("model") or ctx.model_names[0],
                "usage": {"prompt_tokens": num_tokens, "total_tokens": num_tokens}}


async def _run(request: Request, front: Any, obj: dict[str, Any],
               aliases: dict[str, str] | None = None) -> list[dict[str, Any]]:
    try:
        parsed = await front.off_loop(front.parse_encode, obj)  # tokenizing may take a while
    except ValueError as e:
        raise from_value_error(e, aliases) from None
    return await collect(request, front, obj, parsed)


def _native_request(body: dict[str, Any]) -> tuple[dict[str, Any], str]:
    unknown = sorted(set(body) - _OPENAI_FIELDS)
    if unknown:
        raise ApiError(f"unknown field(s): {', '.join(unknown)}", param=unknown[0])
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise ApiError(f"encoding_format must be 'float' or 'base64', got {encoding!r}",
                       param="encoding_format")
    # checked with the prompt (request.parse_encode): allowed for Matryoshka-trained models only
    extra = {"dimensions": body["dimensions"]} if body.get("dimensions") is not None else {}
    inputs = body.get("input")
    if isinstance(inputs, str) or (isinstance(inputs, list) and inputs and all(isinstance(t, str) for t in inputs)):
        return {"text": inputs, **extra}, encoding
    if isinstance(inputs, list) and inputs:
        return {"input_ids": inputs, **extra}, encoding
    raise ApiError("input must be a string, a non-empty list of strings, a list of token ids "
                   "or a list of such lists", param="input")


def _encode_vector(vec: list[float], encoding: str) -> Any:
    if encoding == "float":
        return vec
    return base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode("ascii")


def _is_id_batch(ids: Any) -> bool:
    return isinstance(ids, list) and bool(ids) and isinstance(ids[0], list)
