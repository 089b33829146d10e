"""`python -m sgl.router` and `sgl router` as a user starts them."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest
import requests

from sgl.runtime.cli import main as sgl_main
from sgl.runtime.router.config import RouterArgs
from tests.router.conftest import free_port


def test_sgl_router_help_lists_the_flags(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        sgl_main(["router", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--worker-urls", "--load-balance-method", "--cache-threshold",
                 "--balance-abs-threshold", "--balance-rel-threshold", "--eviction-interval-secs",
                 "--max-tree-size", "--max-retries", "--health-check-interval-secs"):
        assert flag in out


def test_args_defaults_and_url_normalization() -> None:
    args = RouterArgs(worker_urls=["127.0.0.1:8000/", "http://h:1"])
    assert args.worker_urls == ["http://127.0.0.1:8000", "http://h:1"]
    assert (args.load_balance_method, args.cache_threshold, args.balance_abs_threshold,
            args.balance_rel_threshold, args.max_retries) == ("cache_aware", 0.5, 32, 1.0001, 3)
    with pytest.raises(ValueError, match="cache_threshold"):
        RouterArgs(cache_threshold=1.5)


def test_python_m_sgl_router_serves_and_stops(fake_workers) -> None:
    (w0,) = fake_workers(1)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "sgl.router", "--worker-urls", w0.url,
                             "--port", str(port), "--policy", "round_robin",
                             "--log-level", "warning"])
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(url + "/health", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "router did not start"
            time.sleep(0.1)
        res = requests.post(url + "/generate", json={"text": "hi"}, timeout=30)
        assert res.json()["worker"] == w0.url
        info = requests.get(url + "/get_server_info", timeout=30).json()
        assert info["policy"]["name"] == "round_robin"
    finally:
        proc.terminate()
    assert proc.wait(30) == 0
