"""The FastAPI app: SGLang's native routes, the OpenAI routes (openai_api.py), API-key check and
one error shape everywhere. Runs in the HTTP process on top of ServerTokenizerManager."""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import logging
import os
import signal
from dataclasses import dataclass
from typing import Any, AsyncIterator, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from sgl.runtime.config import ServerArgs
from sgl.runtime.io_struct import RequestFailed
from sgl.runtime.server.compat_routes import add_compat_routes
from sgl.runtime.server.data_parallel import merge_states
from sgl.runtime.server.embedding_routes import add_embedding_routes
from sgl.runtime.server.errors import ApiError, error_body, from_value_error, read_json
from sgl.runtime.server.limits import BodyLimitMiddleware, BodyTooLarge, too_large
from sgl.runtime.server.openapi import install_openapi
from sgl.runtime.server.openai_api import OpenAIServing
from sgl.runtime.server.streaming import ClientGone, collect, native_stream, sse_response
from sgl.runtime.tokenizer_manager import RequestTimedOut

logger = logging.getLogger("sgl.server")
_HEALTH_TIMEOUT_S = 20.0


@dataclass
class ServerContext:
    args: ServerArgs
    front: Any                  # ServerTokenizerManager
    info: dict[str, Any]        # from the scheduler: model_path, context_length, ...
    processes: Any = None       # ServerProcesses, watched for crashes
    chat_template: Optional[str] = None

    @property
    def model_path(self) -> str:
        return self.info["model_path"]

    @property
    def model_names(self) -> list[str]:
        """The name /v1/models reports first; any of these is accepted in `model`."""
        names = [self.args.served_model_name or self.model_path, self.model_path,
                 os.path.basename(self.model_path), "default"]
        return list(dict.fromkeys(names))


def build_app(ctx: ServerContext) -> FastAPI:
    app = FastAPI(title="sgl", lifespan=_lifespan(ctx))
    app.state.ctx = ctx
    api_key = ctx.args.resolved_api_key()
    if api_key:
        app.add_middleware(ApiKeyMiddleware, api_key=api_key)
    app.add_middleware(BodyLimitMiddleware, max_bytes=ctx.args.max_request_body_bytes)
    _add_error_handlers(app)
    _add_native_routes(app, ctx)
    _add_control_routes(app, ctx)
    _add_openai_routes(app, ctx)
    add_compat_routes(app, ctx)
    add_embedding_routes(app, ctx)
    install_openapi(app)  # last: it describes the routes added above
    return app


def _lifespan(ctx: ServerContext) -> Any:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ctx.front.start()
        tasks = [asyncio.create_task(_warmup(ctx)), asyncio.create_task(_watch_children(ctx))]
        yield
        for t in tasks:
            t.cancel()
        ctx.front.close()
    return lifespan


async def _warmup(ctx: ServerContext) -> None:
    # one request per data-parallel replica, sent together: both policies spread them
    ok = await asyncio.gather(*(_generate_one(ctx) for _ in range(ctx.args.dp_size)))
    if all(ok):
        logger.info("The server is fired up and ready to roll!")
    else:
        logger.error("warm-up request failed")


async def _generate_one(ctx: ServerContext) -> bool:
    if ctx.args.is_embedding:
        obj: dict[str, Any] = {"input_ids": [0]}
        parsed = ctx.front.parse_encode(obj)
    else:
        obj = {"input_ids": [0], "sampling_params": {"max_new_tokens": 1, "temperature": 0}}
        parsed = ctx.front.parse(obj)

    async def run() -> None:
        async for _ in ctx.front.generate(obj, parsed):
            pass
    try:
        await asyncio.wait_for(run(), _HEALTH_TIMEOUT_S)
        return True
    except (asyncio.TimeoutError, ValueError, RequestFailed):
        return False


async def _watch_children(ctx: ServerContext) -> None:
    """A crashed scheduler or detokenizer takes the whole server down (no half-alive server)."""
    while ctx.processes is not None:
        await asyncio.sleep(1.0)
        dead = ctx.processes.dead_child()
        if dead:
            logger.error("child process %s died; shutting the server down", dead)
            os.kill(os.getpid(), signal.SIGTERM)
            return


class ApiKeyMiddleware:
    """Every route but /health needs `Authorization: Bearer <key>` (pure ASGI, so streaming
    and disconnect detection pass through untouched)."""

    def __init__(self, app: Any, api_key: str) -> None:
        self.app, self.expected = app, f"Bearer {api_key}".encode()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] != "/health":
            got = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(got, self.expected):
                err = ApiError("invalid or missing API key: send 'Authorization: Bearer <key>'",
                               401, "Authorization", "invalid_api_key")
                await err.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, e: ApiError) -> JSONResponse:
        return e.response()

    @app.exception_handler(ValueError)
    async def value_error(_: Request, e: ValueError) -> JSONResponse:
        return from_value_error(e).response()

    @app.exception_handler(RequestFailed)  # the runtime gave up on it (BadRequest: a 400)
    async def request_failed(_: Request, e: RequestFailed) -> JSONResponse:
        return JSONResponse(error_body(e.message, e.status_code), status_code=e.status_code)

    @app.exception_handler(BodyTooLarge)
    async def body_too_large(request: Request, e: BodyTooLarge) -> JSONResponse:
        return too_large(request.app.state.ctx.args.max_request_body_bytes).response()

    @app.exception_handler(RequestTimedOut)
    async def timed_out(_: Request, e: RequestTimedOut) -> JSONResponse:
        return ApiError(str(e), 504, None, "request_timeout").response()

    @app.exception_handler(ClientGone)
    async def client_gone(_: Request, e: ClientGone) -> Response:
        return Response(status_code=499)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, e: RequestValidationError) -> JSONResponse:
        return ApiError(f"invalid request: {e.errors()[:1]}").response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, e: StarletteHTTPException) -> JSONResponse:
        # e.headers: a 405's Allow, which a client needs to correct itself
        return JSONResponse(error_body(str(e.detail), e.status_code), status_code=e.status_code,
                            headers=e.headers)

    @app.exception_handler(Exception)
    async def internal_error(_: Request, e: Exception) -> JSONResponse:
        logger.exception("internal error")
        return JSONResponse(error_body(f"internal server error: {e!r}", 500), status_code=500)


def _add_native_routes(app: FastAPI, ctx: ServerContext) -> None:
    front = ctx.front

    @app.api_route("/health", methods=["GET", "HEAD"])
    async def health() -> Response:
        """200 while every scheduler steps; 503 when one has not stepped for
        --watchdog-timeout, or while the server shuts down."""
        problem = front.health_error()
        return Response(status_code=200) if problem is None else problem.response()

    @app.get("/health_generate")
    async def health_generate() -> Response:
        if await _generate_one(ctx):
            return Response(status_code=200)
        return JSONResponse(error_body("the model did not generate in time", 503), status_code=503)

    @app.get("/get_model_info")
    @app.get("/model_info")
    async def get_model_info() -> dict[str, Any]:
        return {"model_path": ctx.model_path,
                "tokenizer_path": ctx.args.tokenizer_path or ctx.model_path, "is_generation": True}

    @app.get("/get_server_info")
    @app.get("/server_info")
    async def get_server_info() -> dict[str, Any]:
        """Flags, model info and scheduler state: summed over the data-parallel replicas at
        the top level, each replica's own (with its dp_rank) in `internal_states`."""
        states = await front.rpc_all("internal_state")
        info = dataclasses.asdict(ctx.args)
        keyed = ctx.args.api_key or ctx.args.api_key_file or ctx.args.api_key_env
        info["api_key"] = "<hidden>" if keyed else None
        info.update(ctx.info, **merge_states(states), internal_states=states, version=_version())
        return info

    if ctx.args.enable_metrics:
        @app.get("/metrics")
        async def metrics() -> Response:
            state = merge_states(await front.rpc_all("internal_state"))
            return PlainTextResponse(front.metrics.render(state),
                                     media_type="text/plain; version=0.0.4; charset=utf-8")


def _add_control_routes(app: FastAPI, ctx: ServerContext) -> None:
    front = ctx.front

    @app.api_route("/flush_cache", methods=["GET", "POST"])
    async def flush_cache() -> Response:
        if all(await front.rpc_all("flush_cache")):  # a busy replica keeps its cache: say so
            return PlainTextResponse("Cache flushed.\n")
        raise ApiError("cache not flushed: requests are running or waiting; retry when idle",
                       status=400, param=None, code="server_busy")

    @app.post("/abort_request")
    async def abort_request(request: Request) -> Response:
        obj = await read_json(request)
        rid, abort_all = obj.get("rid", ""), obj.get("abort_all", False)
        if not isinstance(rid, str) or not isinstance(abort_all, bool):
            raise ApiError("rid must be a string and abort_all a boolean", param="rid")
        if not rid and not abort_all:
            raise ApiError("give the rid to abort, or abort_all=true", param="rid")
        front.abort_request("" if abort_all else rid)
        return Response(status_code=200)

    @app.post("/generate")
    async def generate(request: Request) -> Response:
        obj = await read_json(request)
        parsed = await _parse_native(front, obj)
        if parsed.stream:
            return await sse_response(request, native_stream(front, obj, parsed))
        results = await collect(request, front, obj, parsed)
        return JSONResponse(results if parsed.is_batch else results[0])


async def _parse_native(front: Any, obj: dict[str, Any]) -> Any:
    try:
        return await front.parse_async(obj)
    except ValueError as e:
        err = from_value_error(e)
        if err.param in ("text", "input_ids"):  # name the prompt field the client sent
            err.param = "input_ids" if "input_ids" in obj and "text" not in obj else "text"
        raise err from None


def _add_openai_routes(app: FastAPI, ctx: ServerContext) -> None:
    serving = OpenAIServing.from_context(ctx)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return serving.models()

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await serving.completions(request)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await serving.chat(request)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("sgl")
    except PackageNotFoundError:
        return "0.0.0"
