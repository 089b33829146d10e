"""Request bodies in /openapi.json. The routes read their JSON themselves (one error shape, fields
named as the client sent them), so FastAPI cannot see their bodies; they are declared here, so
that clients and schema fuzzers can reach every field."""
from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from sgl.runtime.server.protocol import ChatCompletionRequest, CompletionRequest

_TOKEN_IDS = {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1}
_SAMPLING = {
    "type": "object",
    "properties": {
        "max_new_tokens": {"type": "integer", "minimum": 0},
        "min_new_tokens": {"type": "integer", "minimum": 0},
        "temperature": {"type": "number", "minimum": 0},
        "top_p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        "top_k": {"type": "integer", "minimum": -1},
        "min_p": {"type": "number", "minimum": 0, "maximum": 1},
        "frequency_penalty": {"type": "number", "minimum": -2, "maximum": 2},
        "presence_penalty": {"type": "number", "minimum": -2, "maximum": 2},
        "repetition_penalty": {"type": "number", "exclusiveMinimum": 0, "maximum": 2},
        "stop": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
        "stop_token_ids": {"type": "array", "items": {"type": "integer"}},
        "ignore_eos": {"type": "boolean"},
        "skip_special_tokens": {"type": "boolean"},
        "n": {"type": "integer", "minimum": 1},
        "seed": {"type": "integer"},
        "regex": {"type": "string"},
        "json_schema": {"type": "string"},
        "ebnf": {"type": "string"},
        "logit_bias": {"type": "object", "additionalProperties": {"type": "number"}},
    },
}
_HIDDEN_MODE = {"oneOf": [{"type": "boolean"}, {"type": "string", "enum": ["last"]}]}
GENERATE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "text": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
        "input_ids": {"oneOf": [_TOKEN_IDS, {"type": "array", "items": _TOKEN_IDS}]},
        "sampling_params": {"oneOf": [_SAMPLING, {"type": "array", "items": _SAMPLING}]},
        "return_logprob": {"type": "boolean"},
        "logprob_start_len": {"type": "integer", "minimum": -1},
        "top_logprobs_num": {"type": "integer", "minimum": 0, "maximum": 20},
        "return_text_in_logprobs": {"type": "boolean"},
        "stream": {"type": "boolean"},
        "rid": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
        "return_hidden_states": {"oneOf": [_HIDDEN_MODE, {"type": "array", "items": _HIDDEN_MODE}]},
        "priority": {"type": "integer", "minimum": -(1 << 63), "maximum": (1 << 63) - 1},
    },
}
_DIMENSIONS = {"type": "integer", "minimum": 1}  # Matryoshka-trained embedding models only
_ENCODE_SCHEMA = {"type": "object", "properties": {
    **{key: GENERATE_SCHEMA["properties"][key] for key in ("text", "input_ids", "rid")},
    "dimensions": _DIMENSIONS}}
_EMBEDDINGS_SCHEMA = {"type": "object", "required": ["input"], "properties": {
    "input": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1},
                        _TOKEN_IDS, {"type": "array", "items": _TOKEN_IDS, "minItems": 1}]},
    "model": {"type": "string"},
    "encoding_format": {"type": "string", "enum": ["float", "base64"]},
    "dimensions": _DIMENSIONS,
    "user": {"type": "string"}}}
_ABORT_SCHEMA = {"type": "object", "properties": {"rid": {"type": "string"},
                                                  "abort_all": {"type": "boolean"}}}
_REF = "#/components/schemas/{model}"


def install_openapi(app: FastAPI) -> None:
    """Replace app.openapi with one that declares the JSON body of each POST route."""
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _build(app)
        return app.openapi_schema
    app.openapi = openapi  # type: ignore[method-assign]


def _build(app: FastAPI) -> dict[str, Any]:
    doc = get_openapi(title=app.title, version=app.version, routes=app.routes)
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    bodies = {"/generate": GENERATE_SCHEMA, "/abort_request": _ABORT_SCHEMA,
              "/encode": _ENCODE_SCHEMA, "/v1/embeddings": _EMBEDDINGS_SCHEMA}
    for model in (CompletionRequest, ChatCompletionRequest):
        schema = model.model_json_schema(ref_template=_REF)
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    bodies["/v1/completions"] = {"$ref": _REF.format(model="CompletionRequest")}
    bodies["/v1/chat/completions"] = {"$ref": _REF.format(model="ChatCompletionRequest")}
    for path, schema in bodies.items():
        post = doc.get("paths", {}).get(path, {}).get("post")
        if post is not None:
            post["requestBody"] = {"required": True,
                                   "content": {"application/json": {"schema": schema}}}
    return doc
