"""A request that asks for more than the vocabulary holds (top logprobs past the vocabulary, a
request that bypassed the front end's cap) runs beside healthy ones: it gets every token's
logprob, and the healthy requests keep the outputs they have alone."""
from __future__ import annotations

import asyncio
import json

import pytest

from sgl.runtime.engine import Engine, _collect
from tests.server.conftest import TINY_CONFIG

VOCAB = TINY_CONFIG["vocab_size"]
PROMPTS = [[5, 6, 7, 8], [9, 10, 11], [12, 13, 14, 15, 16]]
GREEDY = {"temperature": 0, "max_new_tokens": 4, "ignore_eos": True}


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-isolation")
    (folder / "config.json").write_text(json.dumps(TINY_CONFIG))
    with Engine(model_path=str(folder), load_format="dummy", skip_tokenizer_init=True,
                max_total_tokens=1024, random_seed=1) as e:
        yield e


def _run_batch(engine: Engine, top_logprobs_num: int) -> list[dict]:
    obj = {"input_ids": PROMPTS, "sampling_params": GREEDY, "return_logprob": True,
           "logprob_start_len": 0, "top_logprobs_num": 2}
    parsed = engine.tm.parse(obj)
    parsed.reqs[1].top_logprobs_num = top_logprobs_num  # past the front end's cap
    fut = asyncio.run_coroutine_threadsafe(_collect(engine.tm, obj, parsed), engine._loop)
    return fut.result(timeout=120)


def test_top_logprobs_past_the_vocabulary_beside_healthy_requests(engine):
    alone = [engine.generate(input_ids=p, sampling_params=GREEDY) for p in PROMPTS]
    results = _run_batch(engine, 50_000)
    for i in (0, 2):
        assert results[i]["output_ids"] == alone[i]["output_ids"]
        assert results[i]["meta_info"]["finish_reason"]["type"] == "length"
    poisoned = results[1]["meta_info"]
    assert poisoned["finish_reason"]["type"] == "length"
    assert results[1]["output_ids"] == alone[1]["output_ids"]
    tops = [t for t in poisoned["input_top_logprobs"] + poisoned["output_top_logprobs"] if t]
    assert tops and all(len(t) == VOCAB for t in tops)  # the whole vocabulary, no more
    assert engine.call_in_scheduler(lambda s: s.check_pool_invariant() or True)
