"""`sgl serve` / `python -m sgl.launch_server`: start the scheduler(s) and detokenizer processes,
then serve HTTP from this process until SIGINT/SIGTERM, and take every child down on the way out."""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import tempfile
from typing import Any, NoReturn, Optional

from sgl.runtime.config import ServerArgs
from sgl.runtime.server.ipc import Endpoints, configure_logging, watch_pid

logger = logging.getLogger("sgl.server")
OWNER_PID_ENV = "SGL_OWNER_PID"  # set by sgl.Runtime: stop when that process is gone


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="sgl serve", description="Serve a model over HTTP "
                                     "(SGLang native and OpenAI-compatible routes).")
    ServerArgs.add_cli_args(parser)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    server_args = ServerArgs.from_cli_args(args)
    try:
        if server_args.node_rank > 0:
            serve_follower_node(server_args)
        else:
            launch_server(server_args)
    except KeyboardInterrupt:
        pass
    return 0


def run_as_command(argv: Optional[list[str]] = None) -> NoReturn:
    """`sgl serve` / `python -m sgl.launch_server` as a process: main(), then os._exit with its
    status (ipc.exit_now). By then every child has stopped and the socket folder is gone; what
    is left is the interpreter's teardown of torch and the rest, ~0.7 s of every shutdown. A
    SIGTERM ends main() with SystemExit (shutdown.StartupStop), usage errors too."""
    from sgl.runtime.server.ipc import exit_now
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    exit_now(code)


def serve_follower_node(args: ServerArgs) -> None:
    """A node other than 0: only its tensor-parallel ranks, following node 0's scheduler."""
    import multiprocessing
    from sgl.runtime.executor.tensor_parallel import start_tp_workers
    configure_logging(args.log_level)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    _, procs = start_tp_workers(args, multiprocessing.get_context("spawn"))
    logger.info("node %d: ranks %s following %s", args.node_rank, sorted(procs), args.dist_init_addr)
    for proc in procs.values():
        proc.join()


def launch_server(args: ServerArgs) -> None:
    from sgl.runtime.server.shutdown import StartupStop
    configure_logging(args.log_level)
    stop = StartupStop()
    stop.install()
    if os.environ.get(OWNER_PID_ENV):
        watch_pid(int(os.environ[OWNER_PID_ENV]))
    from sgl.runtime.server.processes import ServerProcesses
    with tempfile.TemporaryDirectory(prefix=ipc_dir_prefix(os.getpid())) as ipc_dir:
        procs = ServerProcesses(args, Endpoints.in_dir(ipc_dir, args.dp_size))
        try:
            _serve(args, procs, stop)
        finally:
            procs.shutdown()


def ipc_dir_prefix(server_pid: int) -> str:
    """Temp folder of a server's ZMQ sockets; named by pid so that whoever started a server
    that was killed outright can remove what it left behind."""
    return f"sgl-{server_pid}-"


def _serve(args: ServerArgs, procs: Any, stop: Any) -> None:
    procs.spawn()  # the children load the model while this process imports the web stack
    from sgl.runtime.matryoshka import Matryoshka
    from sgl.runtime.request_options import RequestPolicy
    from sgl.runtime.server.front import ServerTokenizerManager
    from sgl.runtime.server.http_server import ServerContext, build_app
    from sgl.runtime.server.metrics import ServerMetrics
    from sgl.runtime.server.shutdown import GracefulServer, uvicorn_config
    chat_template = _read_chat_template(args.chat_template)
    info, tokenizer = procs.start(lambda: _load_tokenizer(args), stop.check)
    stop.check()
    name = args.served_model_name or info["model_path"]
    matryoshka = Matryoshka(**info["matryoshka"]) if info.get("matryoshka") else None
    front = ServerTokenizerManager(tokenizer, info["vocab_size"], info["context_length"],
                                   procs.endpoints, ServerMetrics(name), args.log_requests,
                                   args.stream_interval, args.grammar_backend,
                                   args.load_balance_method, args.is_embedding,
                                   args.disaggregation_mode, RequestPolicy.from_args(args),
                                   matryoshka)
    front.request_timeout, front.max_queued_requests = args.request_timeout, args.max_queued_requests
    front.watchdog.timeout_s = args.watchdog_timeout
    app = build_app(ServerContext(args, front, info, procs, chat_template))
    logger.info("serving %s on http://%s:%d", info["model_path"], args.host, args.port)
    GracefulServer(uvicorn_config(app, args), front, stop).run()


def _load_tokenizer(args: ServerArgs) -> Any:
    if args.skip_tokenizer_init:
        return None
    from sgl.runtime.loader.bundled import bundled_model_path
    from sgl.runtime.loader.tokenizer import get_tokenizer
    return get_tokenizer(args.model_path or bundled_model_path(), args.tokenizer_path,
                         args.trust_remote_code)


def _read_chat_template(value: Optional[str]) -> Optional[str]:
    """--chat-template: a Jinja file or Jinja text; None keeps the tokenizer's own."""
    if value is None:
        return None
    if os.path.isfile(value):
        with open(value, encoding="utf-8") as f:
            return f.read()
    if "{%" in value or "{{" in value:
        return value
    raise ValueError(f"--chat-template {value!r}: not a file and not Jinja template text")


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(0)


if __name__ == "__main__":
    sys.exit(main())
