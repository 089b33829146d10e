"""`sgl serve --tp-size 2` on CPU: a scheduler process (rank 0) and a follower rank, the same
greedy tokens as one rank, and no process left when the server is killed."""
from __future__ import annotations

import os
import signal
import time

import torch
import transformers

from sgl.runtime.engine import Engine
from sgl.runtime.server.runtime import Runtime, _alive, _descendants
from tests.server.conftest import generate

PROMPTS = [[5, 17, 99, 3, 42, 8], list(range(10, 40))]
GREEDY = {"max_new_tokens": 12, "temperature": 0, "ignore_eos": True}


def test_tp2_server_matches_one_rank_and_leaves_no_process(tmp_path):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=211, hidden_size=64, intermediate_size=128,
                                      num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2,
                                      max_position_embeddings=512, initializer_range=0.3)
    transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(tmp_path)
    with Engine(str(tmp_path), skip_tokenizer_init=True) as engine:
        expected = [o["output_ids"] for o in engine.generate(input_ids=PROMPTS, sampling_params=GREEDY)]
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
