"""Native routes that SGLang clients call besides /generate: the published sglang frontend's
`/concate_and_append_request` (its fork/join "concate_and_append" mode) and `/separate_reasoning`
(SGLang's route that splits a reasoning model's text)."""
from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request

from sgl.runtime.reasoning_parser import PARSER_NAMES, ReasoningParser
from sgl.runtime.server.errors import ApiError, read_json


def add_compat_routes(app: FastAPI, ctx: Any) -> None:
    @app.post("/concate_and_append_request")
    async def concate_and_append_request(request: Request) -> dict[str, Any]:
        """The sglang frontend joins fork branches with this call after it has sent every
        branch's text (prefix + branch) as a max_new_tokens=0 request and appended the texts
        client-side; its next /generate sends the joined text. The radix cache already holds
        the prefix and the first branch, so the join needs no server state: the call is
        validated and acknowledged. (SGLang's own server lacks the route; its frontend's
        stream ids never reach the server, so there is nothing to look up by them.)"""
        obj = await read_json(request)
        src, dst = obj.get("src_rids"), obj.get("dst_rid")
        if not isinstance(src, list) or not src or not all(isinstance(r, str) for r in src):
            raise ApiError("src_rids must be a non-empty list of strings", param="src_rids")
        if not isinstance(dst, str) or not dst:
            raise ApiError("dst_rid must be a non-empty string", param="dst_rid")
        return {"success": True, "message": f"joined {len(src)} branches into {dst}"}

    @app.post("/separate_reasoning")
    async def separate_reasoning(request: Request) -> dict[str, Any]:
        obj = await read_json(request)
        text = obj.get("text")
        name = obj.get("reasoning_parser") or ctx.args.reasoning_parser
        if not isinstance(text, str):
            raise ApiError("text must be a string", param="text")
        if name not in PARSER_NAMES:
            raise ApiError(f"reasoning_parser must be one of {list(PARSER_NAMES)}, got {name!r}",
                           param="reasoning_parser")
        reasoning, normal = ReasoningParser(name).parse_non_stream(text)
        return {"text": normal, "reasoning_text": reasoning}
