"""Priority scheduling end to end on sgl.Engine (a tiny dummy-weight Llama, one request slot):
a queue of low-priority requests is overtaken by a high-priority one that arrived last, seen
in the order of first tokens; priority's type and range errors name the field."""
from __future__ import annotations

import asyncio
import json
import threading

import pytest

from sgl.runtime.engine import Engine

CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
          "hidden_size": 32, "intermediate_size": 64, "max_position_embeddings": 512,
          "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 2,
          "rms_norm_eps": 1e-05, "vocab_size": 128, "torch_dtype": "float32"}
PARAMS = {"max_new_tokens": 6, "temperature": 0, "ignore_eos": True}


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-dummy")
    (folder / "config.json").write_text(json.dumps(CONFIG))
    with Engine(str(folder), load_format="dummy", skip_tokenizer_init=True, max_running_requests=1,
                enable_priority_scheduling=True) as e:
        yield e
        e.call_in_scheduler(lambda s: s.check_pool_invariant())


def first_token_order(engine: Engine, requests: list[tuple[str, int]]) -> list[str]:
    """Submit (rid, priority) in this order while the scheduler is held, release it, and return
    the order in which the requests' first tokens arrived."""
    entered, release = threading.Event(), threading.Event()

    def hold(_):
        entered.set()
        release.wait(30)

    holder = threading.Thread(target=engine.call_in_scheduler, args=(hold,))
    holder.start()
    assert entered.wait(30)
    order: list[str] = []

    async def one(k: int, rid: str, priority: int) -> None:
        stream = await engine.async_generate(input_ids=[3, 4, 5, k + 7], sampling_params=PARAMS,
                                             stream=True, rid=rid, priority=priority)
        async for _ in stream:
            if rid not in order:
                order.append(rid)

    async def run() -> None:
        tasks = []
        for k, (rid, priority) in enumerate(requests):
            tasks.append(asyncio.create_task(one(k, rid, priority)))
            while engine._inbox.qsize() < k + 1:  # each in the scheduler's inbox before the next
                await asyncio.sleep(0.001)
        release.set()
        await asyncio.gather(*tasks)

    try:
        asyncio.run(run())
    finally:
        release.set()
        holder.join()
    return order


def test_high_priority_overtakes_a_queue_of_low_ones(engine):
    order = first_token_order(engine, [("low0", 0), ("low1", 0), ("low2", 1), ("high", 100)])
    assert order == ["high", "low2", "low0", "low1"]
    assert engine.scheduler.stats.num_preempted == 0  # all were waiting: nothing to preempt


def test_priority_errors_name_the_field(engine):
    with pytest.raises(ValueError, match="priority must be of type int"):
        engine.generate(input_ids=[1, 2], sampling_params=PARAMS, priority="high")
    with pytest.raises(ValueError, match="priority must be a signed 64-bit integer"):
        engine.generate(input_ids=[1, 2], sampling_params=PARAMS, priority=1 << 63)
    assert len(engine.generate(input_ids=[1, 2], sampling_params=PARAMS, priority=-5)["output_ids"]) == 6
