"""cache_aware under a closed loop, as in scripts/dp_router_bench.sh but on CPU: `sgl.bench_serving`
(generated-shared-prefix, 64 clients) through the router to two simulated workers that take time
like a GPU (sgl/bench_sim_worker.py: prefill by uncached tokens, decode steps). With SGLang's
balance thresholds, a transient skew of load must not split the groups of prompts over the two
workers: each group keeps to one worker, and the hit rate stays near the ideal."""
from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from sgl import bench_serving
from sgl.bench_router import wait_healthy
from tests.router.conftest import RouterThread, free_port
from sgl.bench_sim_worker import __file__ as SIM_WORKER_PY

NUM_GROUPS, PER_GROUP, SYSTEM_LEN, QUESTION_LEN = 32, 16, 2048, 128


@pytest.fixture
def sim_workers() -> Iterator[list[str]]:
    procs, urls = [], []
    for _ in range(2):
        port = free_port()
        procs.append(subprocess.Popen(
            [sys.executable, SIM_WORKER_PY, str(port), "--decode-step-s", "0.01",
             "--prefill-tok-per-s", "30000"], stdout=subprocess.DEVNULL))
        urls.append(f"http://127.0.0.1:{port}")
    try:
        for url in urls:
            wait_healthy(url, 30)
        yield urls
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def test_closed_loop_keeps_every_group_on_one_worker(sim_workers: list[str]) -> None:
    router = RouterThread(worker_urls=sim_workers, load_balance_method="cache_aware")
    argv = ["--base-url", router.url, "--dataset-name", "generated-shared-prefix",
            "--gsp-num-groups", str(NUM_GROUPS), "--gsp-prompts-per-group", str(PER_GROUP),
            "--gsp-system-prompt-len", str(SYSTEM_LEN), "--gsp-question-len", str(QUESTION_LEN),
            "--gsp-output-len", "32", "--max-concurrency", "64"]
    try:
        summary = bench_serving.main(argv)
        policy = router.router.policy
    finally:
        router.stop()
    assert summary["completed"] == NUM_GROUPS * PER_GROUP
    # counting all in-flight requests diverted 3-80 here (up to 42 at the H100 run's size);
    # a real backlog at the start (one worker prefilling a burst of new prefixes) may divert 1-2
    assert policy.decisions.get("imbalanced", 0) <= 2, dict(policy.decisions)
    reqs = bench_serving.shared_prefix_requests(bench_serving.parse_args(argv), 32000)
    systems = {" ".join(map(str, r.input_ids[:SYSTEM_LEN])) for r in reqs}
    holders = [policy.tree.prefix_match(text)[1] for text in systems]
    assert len(systems) == NUM_GROUPS and all(holders), holders
    assert sum(len(h) > 1 for h in holders) <= 2, holders
    # each group's first prompt misses, and so do those that meet it in one prefill step (64
    # arrive at once) : the workers' hit rate is a little under the ideal
    ideal = (PER_GROUP - 1) / PER_GROUP * SYSTEM_LEN / (SYSTEM_LEN + QUESTION_LEN)
    assert summary["cache_hit_rate"] > ideal - 0.08, (summary["cache_hit_rate"], ideal)
