"""A soak of `sgl serve`: many mixed requests, then the server must be as it was.

    python -m sgl.bench_soak [--model-path PATH] [--num-requests 2000] [--concurrency 8]
        [--max-new-tokens 8] [--max-total-tokens 2048] [--warmup-requests 200]
        [--num-phases 6] [--rss-tolerance-mb 2.0] [--result-file soak.json] [server flags...]

It starts `sgl serve` (the bundled model by default) on a free loopback port, with any further
flags passed to the server, and sends `--num-requests` requests from `--concurrency` clients: the
mix of sgl/bench_soak_mix.py (plain and streamed /generate and chat, n > 1, regex and json_schema
grammars, streams the client leaves mid-way, bad inputs). The first `--warmup-requests` warm
the server; the rest run in `--num-phases` phases, and after warm-up and after each phase, once
the server is idle, the RSS of every server process (HTTP parent, scheduler, detokenizer) is
read from /proc. Checks, all of which must pass (exit code 1 otherwise):
  no_5xx            no request was answered 5xx (or not at all)
  requests_ok       every good request 200 with a well-formed answer, every bad input a 4xx
  rss_flat          each process grew at most --rss-tolerance-mb per 100 requests after warm-up
  pool_idle         at the end nothing runs or waits, no KV slot is locked, free + cached
                    slots == the pool, and after /flush_cache every slot is free
  same_references   greedy outputs of fixed prompts are identical before and after the soak
A summary is printed and, with --result-file, written as JSON."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests

from sgl.bench_soak_mix import MixConfig, Outcome, send_one
from sgl.runtime.config import ServerArgs
from sgl.runtime.server.runtime import Runtime, _descendants

REFERENCE_PROMPTS = ["The capital of France is", "Once upon a time,", "def fibonacci(n):",
                     "The three primary colours are"]


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, dict[str, Any]]:
    """The soak's own flags, and the server's (those that differ from the defaults)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--num-requests", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=8, help="for the plain kinds")
    p.add_argument("--warmup-requests", type=int, default=None, help="default: 10%% of the total")
    p.add_argument("--num-phases", type=int, default=6)
    p.add_argument("--rss-tolerance-mb", type=float, default=2.0,
                   help="allowed RSS growth per 100 requests after warm-up, per process")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--result-file", default=None)
    p.add_argument("--log-file", default=None, help="the server's output (default: a temp file)")
    a, rest = p.parse_known_args(argv)
    sp = argparse.ArgumentParser(prog="server flags")
    ServerArgs.add_cli_args(sp)
    server = ServerArgs.from_cli_args(sp.parse_args(rest))
    defaults = ServerArgs()
    flags = {f.name: getattr(server, f.name) for f in dataclasses.fields(ServerArgs)
             if getattr(server, f.name) != getattr(defaults, f.name)}
    if a.warmup_requests is None:
        a.warmup_requests = a.num_requests // 10
    return a, flags


def read_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def server_pids(rt: Runtime, info: dict[str, Any]) -> dict[str, int]:
    """parent, scheduler(s) by the pids they report, detokenizer: the other spawned child."""
    pids = {"parent": rt.pid}
    sched = {s["pid"]: f"scheduler{s['dp_rank'] or ''}" for s in info["internal_states"]}
    for pid in _descendants(rt.pid):
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read()
        if pid in sched:
            pids[sched[pid]] = pid
        elif b"resource_tracker" not in cmd:
            pids["detokenizer" if "detokenizer" not in pids else f"child{pid}"] = pid
    return pids


def pool_state(url: str) -> dict[str, Any]:
    info = requests.get(url + "/get_server_info", timeout=60).json()
    keys = ("num_running_reqs", "num_queue_reqs", "max_total_tokens", "free_kv_tokens",
            "evictable_kv_tokens", "locked_kv_tokens")
    return {k: info[k] for k in keys}


def is_idle(s: dict[str, Any]) -> bool:
    return (s["num_running_reqs"] == s["num_queue_reqs"] == s["locked_kv_tokens"] == 0
            and s["free_kv_tokens"] + s["evictable_kv_tokens"] == s["max_total_tokens"])


def wait_idle(url: str, timeout_s: float = 120.0) -> dict[str, Any]:
    """The pool once idle, or as it is when timeout_s has passed (aborts take a step to land)."""
    deadline = time.monotonic() + timeout_s
    while not is_idle(state := pool_state(url)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return state


def references(url: str, max_new_tokens: int = 16) -> list[list[int]]:
    body = {"text": REFERENCE_PROMPTS,
            "sampling_params": {"temperature": 0, "max_new_tokens": max_new_tokens}}
    res = requests.post(url + "/generate", json=body, timeout=300)
    res.raise_for_status()
    return [o["output_ids"] for o in res.json()]


def run_requests(cfg: MixConfig, first: int, count: int, concurrency: int, seed: int
                 ) -> list[Outcome]:
    """Requests first .. first+count-1, each with its own seeded draw (reproducible whatever
    the thread order), from `concurrency` threads with a session each."""
    local = threading.local()

    def one(i: int) -> Outcome:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        return send_one(local.session, random.Random(seed * 1_000_003 + i), cfg)
    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(one, range(first, first + count)))


def _mb_per_100(a: dict[str, Any], b: dict[str, Any], name: str) -> float:
    num = b["num_done"] - a["num_done"]
    return (b["rss_mb"][name] - a["rss_mb"][name]) / num * 100 if num else 0.0


def rss_growth(samples: list[dict[str, Any]], tolerance_mb: float) -> dict[str, Any]:
    """Per process: MB per 100 requests from the first sample (after warm-up) to the last, and
    over the second half of the samples alone (a leak keeps its slope; a warming cache flattens)."""
    first, last, mid = samples[0], samples[-1], samples[len(samples) // 2]
    out: dict[str, Any] = {}
    for name in first["rss_mb"]:
        per_100 = _mb_per_100(first, last, name)
        out[name] = {"start_mb": round(first["rss_mb"][name], 1),
                     "end_mb": round(last["rss_mb"][name], 1),
                     "mb_per_100_requests": round(per_100, 3),
                     "second_half_mb_per_100": round(_mb_per_100(mid, last, name), 3),
                     "flat": per_100 <= tolerance_mb}
    return out


def summarize(outcomes: list[Outcome]) -> dict[str, Any]:
    kinds: dict[str, dict[str, int]] = {}
    for o in outcomes:
        k = kinds.setdefault(o.kind, {"sent": 0, "ok": 0, "max_s": 0.0})
        k["sent"] += 1
        k["ok"] += o.ok
        k["max_s"] = round(max(k["max_s"], o.seconds), 2)
    failures = [dataclasses.asdict(o) for o in outcomes if not o.ok]
    return {"kinds": kinds, "num_5xx": sum(o.status >= 500 or o.status == 0 for o in outcomes),
            "num_failed": len(failures), "failures": failures[:20]}


def soak(a: argparse.Namespace, rt: Runtime) -> dict[str, Any]:
    info = requests.get(rt.url + "/get_server_info", timeout=60).json()
    model = requests.get(rt.url + "/v1/models", timeout=60).json()["data"][0]["id"]
    cfg = MixConfig(rt.url, model, a.max_new_tokens)
    pids = server_pids(rt, info)
    before = references(rt.url)
    t0 = time.monotonic()
    outcomes = run_requests(cfg, 0, a.warmup_requests, a.concurrency, a.seed)
    samples, done = [], a.warmup_requests
    num_rest = a.num_requests - a.warmup_requests
    bounds = [a.warmup_requests + num_rest * (i + 1) // a.num_phases for i in range(a.num_phases)]
    for end in [done, *bounds]:
        outcomes += run_requests(cfg, done, end - done, a.concurrency, a.seed)
        done = end
        state = wait_idle(rt.url)
        samples.append({"num_done": done, "seconds": round(time.monotonic() - t0, 1),
                        "rss_mb": {n: round(read_rss_mb(p), 1) for n, p in pids.items()},
                        "idle": is_idle(state)})
        print(f"[soak] {samples[-1]}", flush=True)  # a long run shows its RSS as it goes
    seconds = time.monotonic() - t0
    end_state = wait_idle(rt.url)
    after = references(rt.url)
    flushed = requests.post(rt.url + "/flush_cache", timeout=60).status_code == 200
    flushed_state = pool_state(rt.url)
    growth = rss_growth(samples, a.rss_tolerance_mb)
    result = summarize(outcomes)
    result.update(
        num_requests=a.num_requests, concurrency=a.concurrency, seconds=round(seconds, 1),
        requests_per_s=round(a.num_requests / seconds, 2), pids=pids, rss_samples=samples,
        rss_growth=growth, pool_end=end_state, pool_after_flush=flushed_state,
        references_before=before, references_after=after)
    result["checks"] = {
        "no_5xx": result["num_5xx"] == 0, "requests_ok": result["num_failed"] == 0,
        "rss_flat": all(g["flat"] for g in growth.values()),
        "pool_idle": is_idle(end_state) and flushed
        and flushed_state["free_kv_tokens"] == flushed_state["max_total_tokens"],
        "same_references": before == after}
    return result


def print_summary(r: dict[str, Any]) -> None:
    print(f"{r['num_requests']} requests at concurrency {r['concurrency']} in {r['seconds']} s "
          f"({r['requests_per_s']} req/s); failed {r['num_failed']}, 5xx {r['num_5xx']}")
    for kind, k in sorted(r["kinds"].items()):
        print(f"  {kind:16s} {k['ok']}/{k['sent']} ok, slowest {k['max_s']} s")
    for f in r["failures"][:5]:
        print(f"  failure: {f}")
    print("RSS (MB) after warm-up and after each phase:")
    for s in r["rss_samples"]:
        print(f"  {s['num_done']:6d} requests {s['seconds']:7.1f} s  "
              + "  ".join(f"{n} {v:.1f}" for n, v in s["rss_mb"].items()))
    for name, g in r["rss_growth"].items():
        print(f"  {name:12s} {g['start_mb']} -> {g['end_mb']} MB: {g['mb_per_100_requests']} MB "
              f"per 100 requests (second half {g['second_half_mb_per_100']})")
    print(f"pool at the end: {r['pool_end']}; after /flush_cache: {r['pool_after_flush']}")
    for name, ok in r["checks"].items():
        print(f"check {name:16s} {'PASS' if ok else 'FAIL'}")


def main(argv: list[str] | None = None) -> int:
    a, flags = parse_args(argv)
    if a.log_file is None:
        fd, a.log_file = tempfile.mkstemp(prefix="soak-", suffix=".log")
        os.close(fd)
    log = a.log_file
    flags.setdefault("log_level", "warning")
    with Runtime(log_file=log, **flags) as rt:
        result = soak(a, rt)
    result["server_flags"], result["server_log"] = flags, log
    print_summary(result)
    if a.result_file:
        with open(a.result_file, "w") as f:
            json.dump(result, f, indent=1)
    return 0 if all(result["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
