"""The serving path without a model: `sgl.bench_serving` (gsp workload) against simulated workers
(sgl/bench_sim_worker.py), directly or through `python -m sgl.router`. Prints the run's
duration, requests/s and SSE chunks/s, the hit rate, and the CPU seconds each process spent
(from /proc), per request: where the time goes when the model costs nothing.

    python -m sgl.bench_router --via router --policy cache_aware [--no-stream]
        [--groups 32 --per-group 8 --system-len 2048 --question-len 128 --output-len 32
         --concurrency 64] [--worker-args "--decode-step-s 0.02"] [--py-spy DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time

import requests

HERE = os.path.dirname(os.path.abspath(__file__))
_TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (its children excluded)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def wait_healthy(url: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if requests.get(url + "/health", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise TimeoutError(url)


def start(cmd: list[str], log: str) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT)


def run(a: argparse.Namespace) -> dict:
    logs = tempfile.mkdtemp(prefix="router-path-")
    procs: dict[str, subprocess.Popen] = {}
    worker_urls = []
    try:
        for i in range(a.num_workers):
            port = a.base_port + 1 + i
            procs[f"worker{i}"] = start([sys.executable, os.path.join(HERE, "bench_sim_worker.py"),
                                         str(port), *shlex.split(a.worker_args)],
                                        f"{logs}/worker{i}.log")
            worker_urls.append(f"http://127.0.0.1:{port}")
        for url in worker_urls:
            wait_healthy(url)
        url = worker_urls[0]
        if a.via == "router":
            cmd = [sys.executable, "-m", "sgl.router", "--worker-urls", *worker_urls,
                   "--port", str(a.base_port), "--load-balance-method", a.policy,
                   "--log-level", "warning", *shlex.split(a.router_args)]
            procs["router"] = start(cmd, f"{logs}/router.log")
            url = f"http://127.0.0.1:{a.base_port}"
            wait_healthy(url)
        spy = None
        if a.py_spy and a.via == "router":
            os.makedirs(a.py_spy, exist_ok=True)
            spy = subprocess.Popen(["py-spy", "record", "-p", str(procs["router"].pid), "-f",
                                    "raw", "-o", f"{a.py_spy}/router.txt", "-r", "200"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1)
        before = {name: cpu_s(p.pid) for name, p in procs.items()}
        bench = [sys.executable, "-m", "sgl.bench_serving", "--base-url", url,
                 "--dataset-name", "generated-shared-prefix", "--gsp-num-groups", str(a.groups),
                 "--gsp-prompts-per-group", str(a.per_group),
                 "--gsp-system-prompt-len", str(a.system_len),
                 "--gsp-question-len", str(a.question_len), "--gsp-output-len",
                 str(a.output_len), "--max-concurrency", str(a.concurrency),
                 "--output-file", f"{logs}/bench.jsonl", *shlex.split(a.bench_args)] + (["--disable-stream"] * a.no_stream)
        t0 = os.times()
        subprocess.run(bench, check=True, stdout=subprocess.DEVNULL)
        t1 = os.times()
        after = {name: cpu_s(p.pid) for name, p in procs.items()}
        if spy is not None:
            spy.send_signal(2)
            spy.wait(30)
        with open(f"{logs}/bench.jsonl") as f:
            s = json.loads(f.readlines()[-1])
        n = s["completed"]
        out = {"via": a.via, "policy": a.policy if a.via == "router" else "-",
               "stream": not a.no_stream, "requests": n, "failed": s["failed"],
               "duration_s": round(s["duration"], 2), "req_per_s": round(n / s["duration"], 1),
               "chunks_per_s": round(n * (a.output_len + 1) / s["duration"], 0)
               if not a.no_stream else 0, "hit_rate": round(s["cache_hit_rate"], 3),
               "median_e2e_ms": round(s["median_e2e_latency_ms"], 1)}
        # bench: its own process (children: none but the run) -> user+sys of the child
        bench_cpu = (t1.children_user - t0.children_user) + (t1.children_system - t0.children_system)
        cpu = {name: after[name] - before[name] for name in procs}
        cpu["bench"] = bench_cpu
        out["cpu_ms_per_req"] = {k: round(v * 1000 / n, 2) for k, v in cpu.items()}
        if a.via == "router":
            info = requests.get(url + "/list_workers", timeout=5).json()
            out["per_worker"] = [w["num_requests"] for w in info["workers"]]
            policy = requests.get(url + "/get_server_info", timeout=5).json()["policy"]
            out["decisions"] = policy.get("decisions")
        return out
    finally:
        for p in procs.values():
            p.terminate()
        for p in procs.values():
            p.wait(10)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--via", choices=["direct", "router"], default="router")
    p.add_argument("--policy", default="cache_aware")
    p.add_argument("--no-stream", action="store_true")
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--base-port", type=int, default=39100)
    p.add_argument("--groups", type=int, default=32)
    p.add_argument("--per-group", type=int, default=8)
    p.add_argument("--system-len", type=int, default=2048)
    p.add_argument("--question-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=32)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--worker-args", default="")
    p.add_argument("--router-args", default="")
    p.add_argument("--bench-args", default="", help="More sgl.bench_serving flags.")
    p.add_argument("--py-spy", default=None, help="Folder for a py-spy profile of the router.")
    return p.parse_args(argv)


if __name__ == "__main__":
    print(json.dumps(run(parse_args())))
