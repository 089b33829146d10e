"""`sgl router` / `python -m sgl.router`: serve the router until SIGINT/SIGTERM."""
from __future__ import annotations

import argparse
import logging
import signal
import sys

from sgl.runtime.router.config import RouterArgs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="sgl router", description="Balance requests over several sgl servers "
        "(data parallelism): SGLang's native and OpenAI routes, retries, health checks.")
    RouterArgs.add_cli_args(parser)
    args = RouterArgs.from_cli_args(parser.parse_args(sys.argv[1:] if argv is None else argv))
    run_router(args)
    return 0


def run_router(args: RouterArgs) -> None:
    import uvicorn

    from sgl.runtime.router.app import build_app
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    app = build_app(args)
    # uvicorn shuts down gracefully on SIGTERM, then re-raises it: end with status 0 then
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level.lower(),
                timeout_graceful_shutdown=3)
