"""The router's FastAPI app. Generation routes go to the worker the policy picks; info routes
to the first healthy worker; /flush_cache to all of them; the rest answer from the router."""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from sgl.runtime.router import metrics
from sgl.runtime.router.client import Client, WorkerError, WorkerTimeout, make_client
from sgl.runtime.router.config import RouterArgs, normalize_url
from sgl.runtime.router.health import HealthChecker
from sgl.runtime.router.policies import Policy, make_policy
from sgl.runtime.router.proxy import Proxy, error_response, request_headers
from sgl.runtime.router.request_text import request_text
from sgl.runtime.router.worker import Worker, WorkerPool
from sgl.runtime.server.streaming import ClientGone, unless_disconnected

logger = logging.getLogger("sgl.router")

GENERATE_ROUTES = ("/generate", "/v1/completions", "/v1/chat/completions")
INFO_ROUTES = ("/v1/models", "/get_model_info", "/health_generate")


class Router:
    """What one router process holds: workers, policy, HTTP client, health checker, proxy."""

    def __init__(self, args: RouterArgs, client: Client | None = None) -> None:
        self.args = args
        self.client = client or make_client()
        self.pool, self.policy, self.health = self._side(*self._main_side())
        self.proxy = Proxy(args, self.pool, self.client, self.health.on_request_failure)

    def _main_side(self) -> tuple[list[str], str | None]:
        """The workers that generation and info requests go to, and their policy's name."""
        return self.args.worker_urls, None

    def _side(self, urls: list[str], policy: str | None) -> tuple[WorkerPool, Policy, HealthChecker]:
        pool = WorkerPool(urls)
        chosen = make_policy(self.args, policy)
        pool.on_remove.append(chosen.remove_worker)
        return pool, chosen, HealthChecker(self.args, pool, self.client)

    @property
    def checkers(self) -> list[HealthChecker]:
        return [self.health]

    @property
    def pools(self) -> list[WorkerPool]:
        return [self.pool]

    @property
    def policies(self) -> list[Any]:
        return [self.policy]

    async def generate(self, path: str, body: bytes, headers: dict[str, str], text: str) -> Response:
        return await self.proxy.forward("POST", path, body, headers, text, self.select)

    @contextlib.asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        await asyncio.gather(*(checker.wait_all() for checker in self.checkers))
        logger.info("routing over %d worker(s) with %s",
                    sum(len(pool.healthy()) for pool in self.pools), self.policy.name)
        tasks = [asyncio.create_task(checker.run()) for checker in self.checkers]
        tasks.append(asyncio.create_task(self._maintain()))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.client.aclose()

    async def _maintain(self) -> None:
        while True:
            await asyncio.sleep(self.args.eviction_interval_secs)
            for policy in self.policies:
                policy.maintain()

    def select(self, workers: Sequence[Worker], text: str) -> Worker:
        return self.policy.select(workers, text)

    @staticmethod
    def first(workers: Sequence[Worker], text: str) -> Worker:
        return workers[0]

    async def add_worker(self, url: str) -> Response:
        if url in self.pool:
            return error_response(f"worker {url} is already registered", 400)
        if not await self.health.wait_healthy(url, self.args.worker_startup_timeout_secs):
            return error_response(f"worker {url} did not answer /health in "
                                  f"{self.args.worker_startup_timeout_secs:.0f} s", 400)
        if url in self.pool:  # added meanwhile by a concurrent call
            return error_response(f"worker {url} is already registered", 400)
        self.pool.add(url, is_healthy=True)
        logger.info("added worker %s", url)
        return PlainTextResponse(f"Added worker: {url}")

    def remove_worker(self, url: str) -> Response:
        if self.pool.remove(url) is None:
            return error_response(f"worker {url} is not registered", 404)
        logger.info("removed worker %s", url)
        return PlainTextResponse(f"Removed worker: {url}")

    async def flush_cache(self, headers: dict[str, str]) -> Response:
        """Broadcast to every healthy worker; forget the policy's cache picture if all flushed."""
        workers = [w for pool in self.pools for w in pool.healthy()]
        if not workers:
            return error_response("no healthy worker", 503)
        results = await asyncio.gather(*(self._call(w, "POST", "/flush_cache", headers)
                                         for w in workers))
        failed = {w.url: r for w, r in zip(workers, results) if r[0] != 200}
        if failed:
            status = next(iter(failed.values()))[0]
            return JSONResponse({"error": {"message": "flush failed on some workers",
                                           "workers": failed, "code": status}},
                                status_code=status)
        for policy in self.policies:
            policy.reset()
        return PlainTextResponse(f"Cache flushed on {len(workers)} worker(s).\n")

    async def _call(self, worker: Worker, method: str, path: str,
                    headers: dict[str, str]) -> tuple[int, str]:
        try:
            upstream = await self.client.open(method, worker.url + path, None, headers,
                                              self.args.request_timeout_secs)
            try:
                body = b"".join([c async for c in upstream.chunks()])
            finally:
                await upstream.aclose()
            return upstream.status, body.decode(errors="replace")
        except (WorkerError, WorkerTimeout) as e:
            return 502, str(e)

    def server_info(self) -> dict[str, Any]:
        return {"router": True, "policy": self.policy.view(),
                "workers": [w.view() for w in self.pool.all()],
                "router_args": dataclasses.asdict(self.args),
                "counters": dict(self.proxy.counters)}


def build_app(args: RouterArgs, client: Client | None = None) -> FastAPI:
    from sgl.runtime.router.pd import PDRouter
    router = PDRouter(args, client) if args.pd_disaggregation else Router(args, client)
    app = FastAPI(title="sgl router", lifespan=router.lifespan)
    app.state.router = router
    _add_proxied_routes(app, router)
    _add_router_routes(app, router)
    return app


def _add_proxied_routes(app: FastAPI, router: Router) -> None:
    async def generate(request: Request) -> Response:
        body = await request.body()
        text = request_text(request.url.path, _json_or_none(body))
        return await _unless_disconnected(request, router.generate(
            request.url.path, body, request_headers(request.headers), text))

    async def info(request: Request) -> Response:
        return await router.proxy.forward("GET", request.url.path, None,
                                          request_headers(request.headers), "", router.first)

    for path in GENERATE_ROUTES:
        app.add_api_route(path, generate, methods=["POST"])
    for path in INFO_ROUTES:
        app.add_api_route(path, info, methods=["GET"])

    @app.api_route("/flush_cache", methods=["GET", "POST"])
    async def flush_cache(request: Request) -> Response:
        return await router.flush_cache(request_headers(request.headers))


def _add_router_routes(app: FastAPI, router: Router) -> None:
    @app.get("/health")
    async def health() -> Response:
        if router.pool.healthy():
            return Response(status_code=200)
        return error_response("no healthy worker", 503)

    @app.get("/get_server_info")
    async def get_server_info() -> dict[str, Any]:
        return router.server_info()

    @app.get("/list_workers")
    async def list_workers() -> dict[str, Any]:
        return {"urls": router.pool.urls(), "workers": [w.view() for w in router.pool.all()]}

    @app.post("/add_worker")
    async def add_worker(url: str = "") -> Response:
        if not url.strip():
            return error_response("give the worker: /add_worker?url=http://host:port", 400)
        return await router.add_worker(normalize_url(url))

    @app.post("/remove_worker")
    async def remove_worker(url: str = "") -> Response:
        if not url.strip():
            return error_response("give the worker: /remove_worker?url=http://host:port", 400)
        return router.remove_worker(normalize_url(url))

    @app.get("/metrics")
    async def get_metrics() -> Response:
        return PlainTextResponse(metrics.render(router.pool, router.proxy.counters),
                                 media_type="text/plain; version=0.0.4; charset=utf-8")


async def _unless_disconnected(request: Request, forward: Any) -> Response:
    """Await `forward`, but cancel it when the client goes away: closing the connection to the
    worker makes the worker abort the request and free its KV."""
    try:
        return await unless_disconnected(request, forward)
    except ClientGone:
        return Response(status_code=499)


def _json_or_none(body: bytes) -> Any:
    try:
        return json.loads(body) if body else None
    except ValueError:
        return None  # the worker will answer the 400
