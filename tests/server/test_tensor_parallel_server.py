"""`sgl serve --tp-size 2` on CPU: a scheduler process (rank 0) and a follower rank, the same
greedy tokens as one rank, and no process left when the server is killed."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import torch
import transformers

from sgl.runtime.engine import Engine
from sgl.runtime.executor.tensor_parallel import free_port
from sgl.runtime.server.runtime import Runtime, _alive, _descendants
from tests.server.conftest import generate

PROMPTS = [[5, 17, 99, 3, 42, 8], list(range(10, 40))]
GREEDY = {"max_new_tokens": 12, "temperature": 0, "ignore_eos": True}


def tiny_model(path) -> list[list[int]]:
    """Save a tiny Llama at path; return its one-rank greedy outputs for PROMPTS."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=211, hidden_size=64, intermediate_size=128,
                                      num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2,
                                      max_position_embeddings=512, initializer_range=0.3)
    transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(path)
    with Engine(str(path), skip_tokenizer_init=True) as engine:
        return [o["output_ids"] for o in engine.generate(input_ids=PROMPTS, sampling_params=GREEDY)]


def test_tp2_server_matches_one_rank_and_leaves_no_process(tmp_path):
    expected = tiny_model(tmp_path)
    runtime = Runtime(model_path=str(tmp_path), skip_tokenizer_init=True, tp_size=2, max_total_tokens=2048,
                      log_file=os.path.join(str(tmp_path), "tp.log"))
    try:
        got = generate(runtime.url, {"input_ids": PROMPTS, "sampling_params": GREEDY})
        assert [o["output_ids"] for o in got] == expected
        children = _descendants(runtime.pid)
        assert len(children) >= 3  # scheduler (rank 0), rank 1, detokenizer
        os.kill(runtime.pid, signal.SIGKILL)
        runtime.process.wait(10)
        deadline = time.time() + 20
        while any(_alive(p) for p in children) and time.time() < deadline:
            time.sleep(0.2)
        assert not [p for p in children if _alive(p)], "a rank outlived the server"
    finally:
        runtime.shutdown()


def test_two_nodes_on_one_host(tmp_path):
    """--nnodes 2: node 1 runs only rank 1 and follows node 0's scheduler over TCP."""
    expected = tiny_model(tmp_path)
    addr = f"127.0.0.1:{free_port()}"
    common = ["--model-path", str(tmp_path), "--tp-size", "2", "--nnodes", "2", "--dist-init-addr", addr,
              "--skip-tokenizer-init", "--max-total-tokens", "2048"]
    follower = subprocess.Popen([sys.executable, "-m", "sgl.launch_server", *common, "--node-rank", "1"])
    runtime = None
    try:
        runtime = Runtime(model_path=str(tmp_path), skip_tokenizer_init=True, tp_size=2, nnodes=2,
                          dist_init_addr=addr, max_total_tokens=2048,
                          log_file=os.path.join(str(tmp_path), "node0.log"))
        got = generate(runtime.url, {"input_ids": PROMPTS, "sampling_params": GREEDY})
        assert [o["output_ids"] for o in got] == expected
        runtime.shutdown()  # rank 0 releases rank 1: the follower node exits by itself
        assert follower.wait(30) == 0
    finally:
        if runtime is not None:
            runtime.shutdown()
        if follower.poll() is None:
            follower.kill()
