"""sgl.Engine on the bundled SmolLM2: the public API, sampling semantics, streaming, bad input,
and the pool invariant after everything."""
from __future__ import annotations

import asyncio
import threading

import pytest

from sgl.runtime.detokenizer import IncrementalDetokenizer
from sgl.runtime.engine import Engine

PROMPT = "The three primary colors are"
GREEDY = {"max_new_tokens": 12, "temperature": 0}


@pytest.fixture(scope="module")
def engine():
    with Engine(random_seed=3) as e:
        yield e
        e.call_in_scheduler(lambda s: s.check_pool_invariant())


def idle_pool(engine: Engine) -> None:
    def check(s):
        s.check_pool_invariant()
        s.tree.check_integrity()
    engine.call_in_scheduler(check)


def test_result_shape(engine):
    out = engine.generate(PROMPT, GREEDY)
    assert set(out) == {"text", "output_ids", "meta_info"}
    meta = out["meta_info"]
    assert meta["prompt_tokens"] == len(engine.tokenizer.encode(PROMPT))
    assert meta["completion_tokens"] == len(out["output_ids"]) == 12
    assert meta["finish_reason"] == {"type": "length", "length": 12}
    assert out["text"] == engine.tokenizer.decode(out["output_ids"], skip_special_tokens=True)


def test_batch_and_list_params(engine):
    outs = engine.generate([PROMPT, "Hello"], [GREEDY, {"max_new_tokens": 3, "temperature": 0}])
    assert [o["meta_info"]["completion_tokens"] for o in outs] == [12, 3]
    assert outs[0]["text"] == engine.generate(PROMPT, GREEDY)["text"]


def test_stream_equals_non_stream(engine):
    full = engine.generate(PROMPT, {"max_new_tokens": 24, "temperature": 0})
    chunks = list(engine.generate(PROMPT, {"max_new_tokens": 24, "temperature": 0}, stream=True))
    assert len(chunks) > 3
    assert "".join(c["text"] for c in chunks) == full["text"]
    assert sum((c["output_ids"] for c in chunks), []) == full["output_ids"]
    assert chunks[-1]["meta_info"]["finish_reason"] is not None


def test_async_generate_and_async_stream(engine):
    async def run():
        one = await engine.async_generate(PROMPT, GREEDY)
        parts = [c["text"] async for c in await engine.async_generate(PROMPT, GREEDY, stream=True)]
        return one, "".join(parts)
    one, streamed = asyncio.run(run())
    assert one["text"] == streamed == engine.generate(PROMPT, GREEDY)["text"]


def test_stop_strings_trimmed_unless_no_stop_trim(engine):
    base = engine.generate(PROMPT, {"max_new_tokens": 20, "temperature": 0})["text"]
    word = base.split()[2]
    cut = engine.generate(PROMPT, {"max_new_tokens": 20, "temperature": 0, "stop": [word]})
    assert cut["meta_info"]["finish_reason"] == {"type": "stop", "matched": word}
    assert cut["text"] == base[: base.index(word)]
    kept = engine.generate(PROMPT, {"max_new_tokens": 20, "temperature": 0, "stop": word, "no_stop_trim": True})
    assert kept["text"].endswith(word) and base.startswith(kept["text"])
    streamed = "".join(c["text"] for c in engine.generate(
        PROMPT, {"max_new_tokens": 20, "temperature": 0, "stop": [word]}, stream=True))
    assert streamed == cut["text"]


def test_stop_token_ids_and_ignore_eos(engine):
    base = engine.generate(PROMPT, {"max_new_tokens": 10, "temperature": 0})
    stop_id = base["output_ids"][3]
    out = engine.generate(PROMPT, {"max_new_tokens": 10, "temperature": 0, "stop_token_ids": [stop_id]})
    assert out["output_ids"] == base["output_ids"][:4]
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop_id}
    eos = engine.generate("Say hi.", {"max_new_tokens": 64, "temperature": 0})
    if eos["meta_info"]["finish_reason"]["type"] == "stop":
        longer = engine.generate("Say hi.", {"max_new_tokens": 64, "temperature": 0, "ignore_eos": True})
        assert longer["meta_info"]["completion_tokens"] == 64


def test_min_new_tokens_blocks_stop_tokens(engine):
    base = engine.generate(PROMPT, {"max_new_tokens": 10, "temperature": 0})
    stop_id = base["output_ids"][1]
    out = engine.generate(PROMPT, {"max_new_tokens": 10, "temperature": 0, "stop_token_ids": [stop_id],
                                   "min_new_tokens": 5})
    assert out["meta_info"]["completion_tokens"] >= 5
    assert stop_id not in out["output_ids"][:5]


def test_logit_bias_forces_token(engine):
    target = engine.tokenizer.encode(" banana")[0]
    out = engine.generate(PROMPT, {"max_new_tokens": 4, "temperature": 0, "logit_bias": {str(target): 100.0}})
    assert out["output_ids"] == [target] * 4


def test_penalties_change_output(engine):
    plain = engine.generate("1, 1, 1, 1, 1,", {"max_new_tokens": 16, "temperature": 0})["output_ids"]
    pen = engine.generate("1, 1, 1, 1, 1,", {"max_new_tokens": 16, "temperature": 0,
                                             "repetition_penalty": 1.8, "frequency_penalty": 1.5})["output_ids"]
    assert len(set(pen)) > len(set(plain))


def test_seeded_sampling_is_reproducible_alone_and_in_batch(engine):
    p = {"max_new_tokens": 16, "temperature": 1.0, "top_p": 0.95, "seed": 1234}
    a = engine.generate(PROMPT, p)["output_ids"]
    b = engine.generate(PROMPT, p)["output_ids"]
    batch = engine.generate(["Hello", PROMPT, "Why"], [GREEDY, p, {"max_new_tokens": 5}])
    assert a == b == batch[1]["output_ids"]
    others = {tuple(engine.generate(PROMPT, dict(p, seed=s))["output_ids"]) for s in range(4)}
    assert len(others) > 1


def test_n_samples_share_the_prompt(engine):
    outs = engine.generate("Write a word:", {"max_new_tokens": 8, "temperature": 1.0, "n": 4, "seed": 7})
    assert len(outs) == 4
    assert len({tuple(o["output_ids"]) for o in outs}) > 1
    prompt_len = outs[0]["meta_info"]["prompt_tokens"]
    assert all(o["meta_info"]["cached_tokens"] == prompt_len - 1 for o in outs)


def test_prefill_only_returns_prompt_logprobs(engine):
    ids = engine.tokenizer.encode(PROMPT)
    out = engine.generate(input_ids=ids, sampling_params={"max_new_tokens": 0}, return_logprob=True,
                          logprob_start_len=0, return_text_in_logprobs=True)
    assert out["output_ids"] == []
    lps = out["meta_info"]["input_token_logprobs"]
    assert len(lps) == len(ids) and lps[0][0] is None
    assert all(lp < 0 for lp, _, _ in lps[1:])
    assert "".join(t for _, _, t in lps) == engine.tokenizer.decode(ids)


def test_skip_special_tokens(engine):
    eos = engine.tokenizer.eos_token_id
    kept = engine.generate(PROMPT, {"max_new_tokens": 2, "temperature": 0, "logit_bias": {str(eos): 100.0},
                                    "ignore_eos": True, "skip_special_tokens": False})
    assert engine.tokenizer.eos_token in kept["text"]
    skipped = engine.generate(PROMPT, {"max_new_tokens": 2, "temperature": 0, "logit_bias": {str(eos): 100.0},
                                       "ignore_eos": True})
    assert skipped["text"] == ""


def test_64_concurrent_shared_prefix_requests_equal_alone(engine):
    system = "You are a concise assistant. Answer in one short sentence. Question: "
    prompts = [system + f"What is {i} plus {i + 1}?" for i in range(64)]
    params = {"max_new_tokens": 6, "temperature": 0}
    engine.generate(system, {"max_new_tokens": 1})  # the shared prefix is now cached
    results: dict[int, dict] = {}

    def worker(i: int) -> None:
        results[i] = engine.generate(prompts[i], params)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(results[i]["meta_info"]["cached_tokens"] > 0 for i in range(64))
    for i in range(0, 64, 4):  # every fourth alone: from the first admitted to the last
        assert results[i]["output_ids"] == engine.generate(prompts[i], params)["output_ids"]
    idle_pool(engine)


BAD = [
    ({"prompt": ""}, "empty"),
    ({"input_ids": [1, 2, 10**9]}, "input_ids"),
    ({"prompt": "x" * 50000}, "context length"),
    ({"sampling_params": {"temperature": -1}}, "temperature"),
    ({"sampling_params": {"top_p": 0}}, "top_p"),
    ({"sampling_params": {"top_p": 1.5}}, "top_p"),
    ({"sampling_params": {"max_new_token": 3}}, "max_new_token"),
    ({"sampling_params": {"max_new_tokens": "3"}}, "max_new_tokens"),
    ({"sampling_params": {"top_k": 0}}, "top_k"),
    ({"sampling_params": {"stop_token_ids": [10**9]}}, "stop_token_ids"),
    ({"sampling_params": {"logit_bias": {"abc": 1}}}, "logit_bias"),
    ({"sampling_params": {"n": 0}}, ".n "),
]


@pytest.mark.parametrize("kwargs,field", BAD, ids=[b[1] for b in BAD])
def test_bad_input_raises_value_error_naming_field(engine, kwargs, field):
    kwargs = dict(kwargs)
    prompt = kwargs.pop("prompt", None if "input_ids" in kwargs else PROMPT)
    with pytest.raises(ValueError, match=field):
        engine.generate(prompt, **kwargs)


def test_bad_input_does_not_disturb_running_requests(engine):
    stream = engine.generate(PROMPT, {"max_new_tokens": 16, "temperature": 0}, stream=True)
    first = next(stream)
    with pytest.raises(ValueError):
        engine.generate(PROMPT, {"temperature": -2})
    rest = "".join(c["text"] for c in stream)
    assert first["text"] + rest == engine.generate(PROMPT, {"max_new_tokens": 16, "temperature": 0})["text"]
    idle_pool(engine)


def test_closing_a_stream_aborts_and_frees_kv(engine):
    stream = engine.generate(PROMPT, {"max_new_tokens": 200, "temperature": 0, "ignore_eos": True}, stream=True)
    next(stream)
    stream.close()
    for _ in range(100):
        if not engine.call_in_scheduler(lambda s: s.has_work):
            break
        threading.Event().wait(0.05)
    idle_pool(engine)


def test_flush_cache_and_server_info(engine):
    engine.generate(PROMPT, {"max_new_tokens": 1})
    assert engine.call_in_scheduler(lambda s: s.tree.total_size()) > 0
    assert engine.flush_cache() is True
    assert engine.call_in_scheduler(lambda s: s.tree.total_size()) == 0
    info = engine.get_server_info()
    assert info["max_total_tokens"] > 0 and info["context_length"] == 8192


def test_detokenizer_never_emits_half_a_character(engine):
    tok = engine.tokenizer
    text = "naïve café 🍕 数据 ✓"
    ids = tok.encode(text)
    detok = IncrementalDetokenizer(tok)
    deltas = [detok.add([t]) for t in ids] + [detok.finish()]
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) == tok.decode(ids)
    assert len(ids) > len(text.split())  # some characters span several tokens


def test_detokenizer_emits_broken_bytes_instead_of_waiting_forever(engine):
    """A stream of lone byte tokens never completes a character; past MAX_PENDING unread tokens
    it is emitted as U+FFFD, so the window decoded per token stays short, and the text still
    equals decoding everything at once."""
    from sgl.runtime.detokenizer import MAX_PENDING
    tok = engine.tokenizer
    lone = next(i for i in range(tok.vocab_size) if tok.decode([i]).endswith("\ufffd"))
    ids = [lone] * 200 + tok.encode(" done")
    detok = IncrementalDetokenizer(tok)
    deltas = []
    for t in ids:
        deltas.append(detok.add([t]))
        assert len(detok.ids) - detok.prefix_offset <= 2 * MAX_PENDING + 2
    deltas.append(detok.finish())
    assert "".join(deltas) == tok.decode(ids)
    assert sum(bool(d) for d in deltas) > 200 // (MAX_PENDING + 1)
