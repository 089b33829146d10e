"""Online serving benchmark against a running server, with SGLang's flags:

    python -m sgl.bench_serving --backend sgl --base-url http://127.0.0.1:30000 \\
        --dataset-name random --num-prompts 200 --random-input-len 512 --random-output-len 128 \\
        --request-rate 16 --max-concurrency 32 --output-file bench.jsonl

Requests arrive as a Poisson process (`--request-rate`, inf: all at once), at most
`--max-concurrency` in flight. Reports TTFT, ITL, TPOT and end-to-end latency (mean, median,
p99) and request/token throughput; appends one JSON line per run to `--output-file`.
Random prompts are token ids (exact lengths, no tokenizer needed on the client).

`--dataset-name generated-shared-prefix` (SGLang's): `--gsp-num-groups` groups of
`--gsp-prompts-per-group` prompts, each a group's shared system prompt (`--gsp-system-prompt-len`
tokens) plus its own question (`--gsp-question-len`), in shuffled order, `--gsp-output-len` new
tokens each (`--num-prompts` is ignored). The report adds the prefix-cache hit rate the server
saw (meta_info.cached_tokens over prompt tokens): the workload for cache-aware routing."""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import requests

from sgl.bench_utils import append_jsonl

_local = threading.local()


@dataclass
class BenchRequest:
    input_ids: list[int]
    output_len: int


@dataclass
class RequestResult:
    success: bool = False
    prompt_len: int = 0
    output_len: int = 0
    ttft: float = 0.0
    latency: float = 0.0
    itl: list[float] = field(default_factory=list)
    cached_tokens: int = 0
    error: str = ""


# -- clients (one thread each; requests' Session is per thread) ---------------------------------
def _session() -> requests.Session:
    if not hasattr(_local, "session"):
        _local.session = requests.Session()
    return _local.session


def _sse(res: requests.Response):
    for line in res.iter_lines():
        if line.startswith(b"data:"):
            body = line[5:].strip()
            if body == b"[DONE]":
                return
            yield json.loads(body)


def _timed_stream(url: str, body: dict, headers: dict, on_event: Callable[[dict], bool],
                  result: RequestResult) -> RequestResult:
    """POST a streaming request; `on_event` returns True when an event carried new tokens."""
    start = last = time.perf_counter()
    try:
        with _session().post(url, json=body, headers=headers, stream=True, timeout=3600) as res:
            if res.status_code != 200:
                result.error = f"HTTP {res.status_code}: {res.text[:200]}"
                return result
            for event in _sse(res):
                if "error" in event:
                    result.error = str(event["error"])
                    return result
                now = time.perf_counter()
                if on_event(event):
                    if result.ttft == 0.0:
                        result.ttft = now - start
                    else:
                        result.itl.append(now - last)
                    last = now
        result.latency = time.perf_counter() - start
        result.success = result.output_len > 0 or body_max_tokens(body) == 0
    except requests.RequestException as e:
        result.error = repr(e)
    return result


def _timed_post(url: str, body: dict, headers: dict, on_event: Callable[[dict], bool],
                result: RequestResult) -> RequestResult:
    """POST a non-streamed request (`--disable-stream`): TTFT is the whole latency."""
    start = time.perf_counter()
    try:
        res = _session().post(url, json=body, headers=headers, timeout=3600)
        if res.status_code != 200:
            result.error = f"HTTP {res.status_code}: {res.text[:200]}"
            return result
        on_event(res.json())
        result.latency = result.ttft = time.perf_counter() - start
        result.success = result.output_len > 0 or body_max_tokens(body) == 0
    except (requests.RequestException, ValueError) as e:
        result.error = repr(e)
    return result


def body_max_tokens(body: dict) -> int:
    return body.get("max_tokens", body.get("sampling_params", {}).get("max_new_tokens", 1))


def send_sgl(base_url: str, req: BenchRequest, args: argparse.Namespace) -> RequestResult:
    body = {"input_ids": req.input_ids, "stream": not args.disable_stream,
            "sampling_params": {"max_new_tokens": req.output_len, "temperature": 0.0,
                                "ignore_eos": not args.disable_ignore_eos}}
    result = RequestResult(prompt_len=len(req.input_ids))
    seen = {"n": 0}

    def on_event(event: dict) -> bool:
        n = event.get("meta_info", {}).get("completion_tokens", len(event.get("output_ids", [])))
        result.prompt_len = event.get("meta_info", {}).get("prompt_tokens", result.prompt_len)
        result.cached_tokens = event.get("meta_info", {}).get("cached_tokens", result.cached_tokens)
        grew, seen["n"] = n > seen["n"], max(seen["n"], n)
        result.output_len = seen["n"]
        return grew

    send = _timed_post if args.disable_stream else _timed_stream
    return send(base_url + "/generate", body, _headers(args), on_event, result)


def send_sgl_oai(base_url: str, req: BenchRequest, args: argparse.Namespace) -> RequestResult:
    body = {"model": args.model or "default", "prompt": req.input_ids, "max_tokens": req.output_len,
            "temperature": 0.0, "ignore_eos": not args.disable_ignore_eos, "stream": True,
            "stream_options": {"include_usage": True}}
    result = RequestResult(prompt_len=len(req.input_ids))
    chunks = {"n": 0}

    def on_event(event: dict) -> bool:
        if event.get("usage"):
            result.output_len = event["usage"]["completion_tokens"]
            result.prompt_len = event["usage"]["prompt_tokens"]
            details = event["usage"].get("prompt_tokens_details") or {}
            result.cached_tokens = details.get("cached_tokens", result.cached_tokens)
        choices = event.get("choices") or []
        if choices and choices[0].get("text"):
            chunks["n"] += 1
            result.output_len = max(result.output_len, chunks["n"])
            return True
        return False

    return _timed_stream(base_url + "/v1/completions", body, _headers(args), on_event, result)


BACKENDS = {"sgl": send_sgl, "sglang": send_sgl,
            "sgl-oai": send_sgl_oai, "sglang-oai": send_sgl_oai}


def _headers(args: argparse.Namespace) -> dict[str, str]:
    return {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}


# -- workload -----------------------------------------------------------------------------------
def random_requests(args: argparse.Namespace, vocab_size: int) -> list[BenchRequest]:
    rng = np.random.default_rng(args.seed)
    lo_in = max(int(args.random_input_len * args.random_range_ratio), 1)
    lo_out = max(int(args.random_output_len * args.random_range_ratio), 1)
    in_lens = rng.integers(lo_in, args.random_input_len + 1, size=args.num_prompts)
    out_lens = rng.integers(lo_out, args.random_output_len + 1, size=args.num_prompts)
    return [BenchRequest(rng.integers(0, vocab_size, size=int(n)).tolist(), int(m))
            for n, m in zip(in_lens, out_lens)]


def shared_prefix_requests(args: argparse.Namespace, vocab_size: int) -> list[BenchRequest]:
    rng = np.random.default_rng(args.seed)
    reqs = []
    for _ in range(args.gsp_num_groups):
        system = rng.integers(0, vocab_size, size=args.gsp_system_prompt_len).tolist()
        for _ in range(args.gsp_prompts_per_group):
            question = rng.integers(0, vocab_size, size=args.gsp_question_len).tolist()
            reqs.append(BenchRequest(system + question, args.gsp_output_len))
    order = rng.permutation(len(reqs))
    return [reqs[i] for i in order]


def _vocab_size(base_url: str, args: argparse.Namespace) -> int:
    if args.random_vocab_size:
        return args.random_vocab_size
    try:
        info = requests.get(base_url + "/get_server_info", headers=_headers(args), timeout=30).json()
        if "vocab_size" not in info and info.get("workers"):  # the router: ask its first worker
            url = info["workers"][0]["url"]
            info = requests.get(url + "/get_server_info", headers=_headers(args), timeout=30).json()
        return int(info.get("vocab_size") or 32000)
    except (requests.RequestException, ValueError, KeyError, TypeError):
        return 32000


async def run_benchmark(args: argparse.Namespace, base_url: str, reqs: list[BenchRequest]
                        ) -> tuple[list[RequestResult], float]:
    send = BACKENDS[args.backend]
    rng = random.Random(args.seed)
    limit = args.max_concurrency or len(reqs)
    sem = asyncio.Semaphore(limit)
    pool = ThreadPoolExecutor(max_workers=min(limit, len(reqs), 1024))
    loop = asyncio.get_running_loop()

    async def one(req: BenchRequest) -> RequestResult:
        async with sem:
            return await loop.run_in_executor(pool, send, base_url, req, args)

    start = time.perf_counter()
    tasks = []
    for req in reqs:
        tasks.append(asyncio.create_task(one(req)))
        if args.request_rate != float("inf"):
            await asyncio.sleep(rng.expovariate(args.request_rate))
    results = await asyncio.gather(*tasks)
    duration = time.perf_counter() - start
    pool.shutdown()
    return results, duration


# -- report -------------------------------------------------------------------------------------
def _ms(seconds: list[float]) -> np.ndarray:
    return np.asarray(seconds, dtype=float) * 1000 if seconds else np.zeros(1)


def summarize(args: argparse.Namespace, results: list[RequestResult], duration: float
              ) -> dict[str, Any]:
    ok = [r for r in results if r.success]
    ttft, e2e = _ms([r.ttft for r in ok]), _ms([r.latency for r in ok])
    tpot = _ms([(r.latency - r.ttft) / (r.output_len - 1) for r in ok if r.output_len > 1])
    itl = _ms([x for r in ok for x in r.itl])
    total_in, total_out = sum(r.prompt_len for r in ok), sum(r.output_len for r in ok)
    total_cached = sum(r.cached_tokens for r in ok)
    out: dict[str, Any] = {
        "backend": args.backend, "dataset_name": args.dataset_name,
        "request_rate": args.request_rate if args.request_rate != float("inf") else "inf",
        "max_concurrency": args.max_concurrency, "random_input_len": args.random_input_len,
        "random_output_len": args.random_output_len, "random_range_ratio": args.random_range_ratio,
        "num_prompts": len(results), "completed": len(ok), "failed": len(results) - len(ok),
        "duration": duration, "total_input_tokens": total_in, "total_output_tokens": total_out,
        "request_throughput": len(ok) / duration, "input_throughput": total_in / duration,
        "output_throughput": total_out / duration,
        "total_throughput": (total_in + total_out) / duration,
        "concurrency": float(np.sum(e2e) / 1000 / duration) if ok else 0.0,
        "total_cached_tokens": total_cached, "cache_hit_rate": total_cached / max(total_in, 1),
    }
    for name, xs in (("ttft", ttft), ("itl", itl), ("tpot", tpot), ("e2e_latency", e2e)):
        out.update({f"mean_{name}_ms": float(np.mean(xs)),
                    f"median_{name}_ms": float(np.median(xs)),
                    f"p99_{name}_ms": float(np.percentile(xs, 99))})
    out["errors"] = sorted({r.error for r in results if r.error})[:5]
    return out


def print_report(s: dict[str, Any]) -> None:
    rows = [("Backend:", s["backend"]), ("Traffic request rate:", s["request_rate"]),
            ("Max request concurrency:", s["max_concurrency"] or "not set"),
            ("Successful requests:", s["completed"]), ("Failed requests:", s["failed"]),
            ("Benchmark duration (s):", f"{s['duration']:.2f}"),
            ("Total input tokens:", s["total_input_tokens"]),
            ("Total generated tokens:", s["total_output_tokens"]),
            ("Request throughput (req/s):", f"{s['request_throughput']:.2f}"),
            ("Input token throughput (tok/s):", f"{s['input_throughput']:.2f}"),
            ("Output token throughput (tok/s):", f"{s['output_throughput']:.2f}"),
            ("Total token throughput (tok/s):", f"{s['total_throughput']:.2f}"),
            ("Concurrency:", f"{s['concurrency']:.2f}"),
            ("Prefix cache hit rate:", f"{s['cache_hit_rate']:.3f}")]
    print("{s:{c}^50}".format(s=" Serving Benchmark Result ", c="="))
    for k, v in rows:
        print(f"{k:<40}{v!s:<10}")
    for title, key in (("End-to-End Latency", "e2e_latency"), ("Time to First Token", "ttft"),
                       ("Time per Output Token (excl. 1st token)", "tpot"),
                       ("Inter-token Latency", "itl")):
        print("{s:{c}^50}".format(s=title, c="-"))
        label = {"e2e_latency": "E2E Latency"}.get(key, key.upper())
        for stat in ("mean", "median", "p99"):
            name = f"{stat.capitalize() if stat != 'p99' else 'P99'} {label} (ms):"
            print(f"{name:<40}{s[f'{stat}_{key}_ms']:<10.2f}")
    print("=" * 50)
    for err in s["errors"]:
        print("error:", err)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m sgl.bench_serving",
                                description=__doc__.split("\n")[0])
    p.add_argument("--backend", choices=sorted(BACKENDS), default="sgl")
    p.add_argument("--base-url", default=None, help="Server URL; default http://HOST:PORT.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=30000)
    p.add_argument("--model", default=None,
                   help="Model name for the OpenAI backend (default: 'default').")
    p.add_argument("--api-key", default=None)
    p.add_argument("--dataset-name", choices=["random", "generated-shared-prefix"], default="random")
    p.add_argument("--num-prompts", type=int, default=1000)
    p.add_argument("--random-input-len", type=int, default=1024)
    p.add_argument("--random-output-len", type=int, default=1024)
    p.add_argument("--random-range-ratio", type=float, default=0.0,
                   help="Lengths are uniform in [len * ratio, len].")
    p.add_argument("--random-vocab-size", type=int, default=None,
                   help="Token ids are drawn below this (default: the server's vocab_size).")
    p.add_argument("--gsp-num-groups", type=int, default=64)
    p.add_argument("--gsp-prompts-per-group", type=int, default=16)
    p.add_argument("--gsp-system-prompt-len", type=int, default=2048)
    p.add_argument("--gsp-question-len", type=int, default=128)
    p.add_argument("--gsp-output-len", type=int, default=256)
    p.add_argument("--request-rate", type=float, default=float("inf"),
                   help="Requests per second (Poisson arrivals); inf sends all at once.")
    p.add_argument("--max-concurrency", type=int, default=None)
    p.add_argument("--disable-stream", action="store_true",
                   help="sgl backend: ask for the whole answer at once (no SSE).")
    p.add_argument("--disable-ignore-eos", action="store_true", help="Let requests stop at EOS.")
    p.add_argument("--warmup-requests", type=int, default=1)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--output-file", default=None, help="Append the results as one JSON line.")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    base_url = (args.base_url or f"http://{args.host}:{args.port}").rstrip("/")
    make = shared_prefix_requests if args.dataset_name == "generated-shared-prefix" else random_requests
    reqs = make(args, _vocab_size(base_url, args))
    for req in reqs[:args.warmup_requests]:
        warm = BACKENDS[args.backend](base_url, BenchRequest(req.input_ids[:16], 4), args)
        if not warm.success:
            raise SystemExit(f"warm-up request failed: {warm.error}")
    results, duration = asyncio.run(run_benchmark(args, base_url, reqs))
    summary = summarize(args, results, duration)
    print_report(summary)
    append_jsonl(args.output_file, summary)
    return summary


if __name__ == "__main__":
    main()
