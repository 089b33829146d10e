"""Prefill-decode disaggregation against data parallelism on two GPUs, both in one call:

    python -m sgl.bench_pd [--model-path runtime/configs/llama-3.1-8b-dummy] \\
        [--num-streams 64 --stream-input-len 256 --stream-output-len 256] \\
        [--num-long 24 --long-input-len 8192 --long-output-len 8 --long-rate 0.5] \\
        [--setups pd,dp] [--output-file pd.jsonl] [--log-dir DIR]

Each setup runs servers on GPUs 0 and 1 (one each, by CUDA_VISIBLE_DEVICES) behind the router:
  pd  a prefill server (GPU 0) and a decode server (GPU 1), `sgl router --pd-disaggregation`
  dp  two colocated servers, `sgl router --worker-urls` (round_robin)
The workload: `--num-streams` clients each stream one request after another (short prompts,
long outputs, EOS ignored) while `--num-long` long prompts arrive at `--long-rate` per second.
Measured over the window from the first long prompt's arrival to the last one's end: the
streams' inter-token latency p50/p99, the long prompts' TTFT p50/p99 and output throughput
(every token the window saw). The issue's target: pd's ITL p99 <= 0.5x dp's at equal or better
throughput; the last lines print the ratios."""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import numpy as np
import requests

from sgl.bench_serving import BenchRequest, send_sgl
from sgl.bench_utils import append_jsonl

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_MODEL = os.path.join(HERE, "runtime", "configs", "llama-3.1-8b-dummy")


def launch(cmd: list[str], log: str, gpu: str | None = None) -> subprocess.Popen:
    env = dict(os.environ, **({"CUDA_VISIBLE_DEVICES": gpu} if gpu is not None else {}))
    return subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env)


def wait_ready(url: str, route: str, timeout_s: float = 900) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if requests.get(url + route, timeout=30).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(1)
    raise TimeoutError(f"{url}{route} not ready in {timeout_s:.0f} s")


def start_setup(setup: str, a: argparse.Namespace, logs: str
                ) -> tuple[str, int, list[subprocess.Popen]]:
    """The servers and router of a setup: the router's URL, the vocabulary size, every process."""
    server = [sys.executable, "-m", "sgl.launch_server", "--model-path", a.model_path,
              "--load-format", a.load_format, "--log-level", "warning", *a.server_flags.split()]
    roles = (["prefill", "decode"] if setup == "pd" else ["null", "null"])
    procs, urls = [], []
    for gpu, role in enumerate(roles):
        port = a.base_port + 1 + gpu
        extra = ["--disaggregation-mode", role]
        if role == "prefill":
            extra += ["--disaggregation-bootstrap-port", str(a.base_port + 10)]
        procs.append(launch(server + ["--port", str(port), *extra], f"{logs}/{setup}{gpu}.log", str(gpu)))
        urls.append(f"http://127.0.0.1:{port}")
    for url in urls:
        wait_ready(url, "/health_generate")
    vocab = int(requests.get(urls[0] + "/get_server_info", timeout=60).json()["vocab_size"])
    router = [sys.executable, "-m", "sgl.router", "--port", str(a.base_port), "--log-level", "warning"]
    if setup == "pd":
        router += ["--pd-disaggregation", "--prefill", urls[0], str(a.base_port + 10),
                   "--decode", urls[1]]
    else:
        router += ["--worker-urls", *urls, "--policy", "round_robin"]
    procs.append(launch(router, f"{logs}/{setup}_router.log"))
    url = f"http://127.0.0.1:{a.base_port}"
    wait_ready(url, "/health")
    return url, vocab, procs


def run_workload(url: str, vocab: int, a: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(a.seed)
    low, high = min(100, vocab // 4), min(vocab, 20000)  # plain tokens, no special ones
    client = argparse.Namespace(disable_stream=False, disable_ignore_eos=False, api_key=None)
    stream_tokens: list[tuple[float, float]] = []  # (when, inter-token latency) of the streams
    long_results: list[Any] = []
    stream_errors: list[str] = []
    done = threading.Event()
    lock = threading.Lock()

    def streamer(k: int) -> None:
        while not done.is_set():
            ids = [rng.randrange(low, high) for _ in range(a.stream_input_len)]
            start = time.perf_counter()
            r = send_sgl(url, BenchRequest(ids, a.stream_output_len), client)
            when = start + r.ttft + np.cumsum(r.itl) if r.itl else []
            with lock:
                stream_tokens.extend(zip(when, r.itl))
                stream_errors.extend([r.error] if r.error else [])

    def long_prompt(i: int) -> None:
        ids = [rng.randrange(low, high) for _ in range(a.long_input_len)]
        start = time.perf_counter()
        r = send_sgl(url, BenchRequest(ids, a.long_output_len), client)
        with lock:
            long_results.append((start, start + r.latency, r))

    threads = [threading.Thread(target=streamer, args=(k,), daemon=True) for k in range(a.num_streams)]
    for t in threads:
        t.start()
    time.sleep(a.warmup_s)  # the streams reach their steady decode
    window_start = time.perf_counter()
    longs = []
    for i in range(a.num_long):
        longs.append(threading.Thread(target=long_prompt, args=(i,), daemon=True))
        longs[-1].start()
        time.sleep(rng.expovariate(a.long_rate))
    for t in longs:
        t.join()
    window_end = time.perf_counter()
    done.set()
    for t in threads:
        t.join()
    return summarize(stream_tokens, long_results, window_start, window_end, stream_errors)


def summarize(stream_tokens: list[tuple[float, float]], long_results: list[Any],
              start: float, end: float, stream_errors: list[str]) -> dict[str, Any]:
    itl = np.array([x for when, x in stream_tokens if start <= when <= end]) * 1000
    ok = [r for _, _, r in long_results if r.success]
    ttft = np.array([r.ttft for r in ok]) * 1000
    long_tokens = sum(r.output_len for r in ok)
    return {"window_s": end - start, "stream_itl_p50_ms": _pct(itl, 50),
            "stream_itl_p99_ms": _pct(itl, 99), "long_ttft_p50_ms": _pct(ttft, 50),
            "long_ttft_p99_ms": _pct(ttft, 99), "long_failed": len(long_results) - len(ok),
            "output_throughput": (len(itl) + long_tokens) / (end - start),
            "stream_failed": len(stream_errors),
            "errors": sorted({r.error for _, _, r in long_results if r.error} | set(stream_errors))[:3]}


def _pct(xs: np.ndarray, q: float) -> float:
    return float(np.percentile(xs, q)) if len(xs) else float("nan")


def stop(procs: list[subprocess.Popen]) -> None:
    for p in reversed(procs):
        p.terminate()
    for p in procs:
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            p.kill()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m sgl.bench_pd", description=__doc__.split("\n")[0])
    p.add_argument("--model-path", default=DEFAULT_MODEL)
    p.add_argument("--load-format", default="dummy")
    p.add_argument("--server-flags", default="--skip-tokenizer-init",
                   help="Extra flags for every server (one string).")
    p.add_argument("--setups", default="pd,dp", help="Which setups to run, in order.")
    p.add_argument("--num-streams", type=int, default=64)
    p.add_argument("--stream-input-len", type=int, default=256)
    p.add_argument("--stream-output-len", type=int, default=256)
    p.add_argument("--num-long", type=int, default=24)
    p.add_argument("--long-input-len", type=int, default=8192)
    p.add_argument("--long-output-len", type=int, default=8)
    p.add_argument("--long-rate", type=float, default=0.5, help="Long prompts per second (Poisson).")
    p.add_argument("--warmup-s", type=float, default=20.0)
    p.add_argument("--base-port", type=int, default=32000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--output-file", default=None, help="Append each setup's results as a JSON line.")
    p.add_argument("--log-dir", default=None,
                   help="Where the servers' and routers' logs go (default: a new temporary directory).")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    a = parse_args(argv)
    logs = a.log_dir or tempfile.mkdtemp(prefix="bench-pd-")
    os.makedirs(logs, exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    for setup in a.setups.split(","):
        procs: list[subprocess.Popen] = []
        try:
            url, vocab, procs = start_setup(setup, a, logs)
            results[setup] = dict(run_workload(url, vocab, a), setup=setup, args=vars(a))
        finally:
            stop(procs)
        print(setup, json.dumps({k: v for k, v in results[setup].items() if k != "args"}), flush=True)
        append_jsonl(a.output_file, results[setup])
    if {"pd", "dp"} <= set(results) and min(r["output_throughput"] for r in results.values()) > 0:
        pd, dp = results["pd"], results["dp"]
        print(f"ITL p99 pd/dp {pd['stream_itl_p99_ms'] / dp['stream_itl_p99_ms']:.2f} (target <= 0.5), "
              f"throughput pd/dp {pd['output_throughput'] / dp['output_throughput']:.2f} "
              f"(target >= 1.0); logs in {logs}")
    return results


if __name__ == "__main__":
    main()
