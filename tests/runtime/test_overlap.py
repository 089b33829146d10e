"""Overlap scheduling on the bundled model (forced on: the default enables it on GPUs only): the
same tokens and logprobs as the synchronous loop for a mixed batch (greedy, seeded sampling, stop
strings, short and long limits, a penalty that stops the chain, n > 1; grammars with and without
jump-forward), chained steps really taken, and no KV held once idle."""
from __future__ import annotations

import json

import pytest

from sgl.runtime.engine import Engine

PROMPTS = ["Repeat exactly: the quick brown fox jumps over the lazy dog.",
           "List the numbers from 1 to 20 separated by commas:", "Tell me about Paris.",
           "What is 2+2? Explain.", "Write a short poem about the sea.", "Name three colors."]
PARAMS = [{"temperature": 0, "max_new_tokens": 30},
          {"temperature": 0.8, "seed": 3, "max_new_tokens": 25, "top_p": 0.9},
          {"temperature": 0, "max_new_tokens": 3},
          {"temperature": 0, "max_new_tokens": 40, "stop": ["4"]},
          {"temperature": 0, "max_new_tokens": 30, "ignore_eos": True},
          {"temperature": 0, "max_new_tokens": 20, "frequency_penalty": 0.8}]


def _run(engine: Engine) -> tuple:
    batch = engine.generate(PROMPTS, PARAMS)
    logprobs = engine.generate(PROMPTS[0], {"temperature": 0, "max_new_tokens": 20},
                               return_logprob=True, top_logprobs_num=2)
    many = engine.generate(PROMPTS[1], {"temperature": 0.9, "max_new_tokens": 20, "n": 3, "seed": 1})
    streamed = "".join(c["text"] for c in engine.generate(PROMPTS[4], PARAMS[4], stream=True))
    return ([o["text"] for o in batch], [o["meta_info"]["finish_reason"] for o in batch],
            logprobs["meta_info"]["output_token_logprobs"], [o["text"] for o in many], streamed)


@pytest.fixture(scope="module")
def reference() -> tuple:
    with Engine(max_total_tokens=4096) as engine:
        assert not engine.scheduler.overlap  # CPU default
        return _run(engine)


def test_overlap_gives_the_synchronous_results(reference):
    with Engine(max_total_tokens=4096) as engine:
        engine.call_in_scheduler(lambda s: setattr(s, "overlap", True))
        got = _run(engine)
        assert engine.scheduler.stats.num_overlapped > 20
        engine.call_in_scheduler(lambda s: s.check_pool_invariant())
    texts, reasons, logprobs, many, streamed = got
    assert texts == reference[0] and reasons == reference[1]
    assert many == reference[3]
    assert streamed == reference[4] == reference[0][4]
    assert [(t, top) for _, t, top in logprobs] == [(t, top) for _, t, top in reference[2]]
    assert [lp for lp, _, _ in logprobs] == pytest.approx([lp for lp, _, _ in reference[2]], abs=1e-5)


SCHEMA = {"type": "object", "properties": {
    "customer_identification_number": {"type": "integer"},
    "requested_delivery_window": {"enum": ["morning", "afternoon", "evening"]},
    "name": {"type": "string"}},
    "required": ["customer_identification_number", "requested_delivery_window", "name"]}


def _structured(engine: Engine, jump_forward: bool) -> list[str]:
    engine.call_in_scheduler(lambda s: setattr(s.grammar, "jump_forward", jump_forward))
    prompts = [f"Order {i} as JSON:" for i in range(5)] + ["Answer yes or no, then a word:"]
    params = [{"temperature": 1.0, "seed": i, "max_new_tokens": 30, "json_schema": json.dumps(SCHEMA)}
              for i in range(5)]
    params.append({"temperature": 0, "max_new_tokens": 30, "regex": "(yes|no), [a-z]{2,8}\\."})
    return [o["text"] for o in engine.generate(prompts, params)]


def test_overlap_with_grammars_and_jump_forward():
    """Grammar masks are filled while the next forward runs; a jump-forward voids the row that
    was in flight. Same texts as the synchronous loop, with and without jump-forward."""
    with Engine(max_total_tokens=4096) as engine:
        expected = [_structured(engine, True), _structured(engine, False)]
    with Engine(max_total_tokens=4096) as engine:
        engine.call_in_scheduler(lambda s: setattr(s, "overlap", True))
        got = [_structured(engine, True), _structured(engine, False)]
        assert engine.scheduler.stats.num_overlapped > 20
        engine.call_in_scheduler(lambda s: s.check_pool_invariant())
    assert got == expected


def test_grammar_masks_are_filled_after_the_forward_is_queued():
    """In a step with constrained rows the runner queues the forward, the host fills the masks
    (while the device would run it), then sampling is queued with them: in every such step, in
    this order, whether or not the steps chain."""
    events: list[str] = []

    class Recorder:
        def __init__(self, inner):
            self.inner, self.info = inner, inner.info

        def launch_batch(self, step):
            events.append("batch")
            return self.inner.launch_batch(step)

        def launch_forward(self, step):
            events.append("forward")
            return self.inner.launch_forward(step)

        def launch_sampling(self, step, forward):
            events.append("sampling" if step.vocab_mask is None else "sampling+mask")
            return self.inner.launch_sampling(step, forward)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    for overlap in (False, True):
        events.clear()
        with Engine(max_total_tokens=4096) as engine:
            def install(s):
                s.overlap = overlap
                s.runner = s.chain.runner = Recorder(s.runner)
                fill = s.grammar.manager.backend.fill_bitmasks
                s.grammar.manager.backend.fill_bitmasks = lambda *a: (events.append("mask"), fill(*a))
            engine.call_in_scheduler(install)
            out = engine.generate(PROMPTS[0], {"temperature": 0, "max_new_tokens": 12,
                                               "regex": "(yes|no), [a-z]{2,8}\\."})
        assert out["meta_info"]["finish_reason"]["type"] == "stop"
        masked = [i for i, e in enumerate(events) if e == "mask"]
        assert len(masked) >= 3, events
        for i in masked:  # forward queued first, sampling with the mask right after
            assert events[i - 1] == "forward" and events[i + 1] == "sampling+mask", events
        assert "batch" not in events, events  # no constrained step samples without its mask
