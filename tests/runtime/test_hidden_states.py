"""return_hidden_states on sgl.Engine against transformers (float32, a tiny random Llama): the
final layer's output after the final norm (transformers' `hidden_states[-1]`), for every prompt
position and every output token fed back, cold, through a cached prefix and chunked prefill,
streamed, and "last"; and the error when the engine was not started to return them."""
from __future__ import annotations

import json

import pytest
import torch
import transformers

from sgl.runtime.engine import Engine
from sgl.runtime.loader.bundled import bundled_model_path

PROMPTS = [[5, 17, 99, 3, 42, 8, 61, 2, 77, 13, 21], [7, 7, 7, 30, 31]]
GREEDY = {"max_new_tokens": 5, "temperature": 0, "ignore_eos": True}


def tiny_llama(folder) -> transformers.LlamaForCausalLM:
    """A 2-layer random Llama (float32), saved in `folder` (the server tests use it too)."""
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=127, hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=4096, initializer_range=0.3)
    model = transformers.LlamaForCausalLM(cfg).eval()
    model.save_pretrained(folder)
    return model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tiny-llama"))
    return path, tiny_llama(path)


@pytest.fixture(scope="module")
def engine(tiny):
    with Engine(tiny[0], skip_tokenizer_init=True, enable_return_hidden_states=True,
                chunked_prefill_size=4) as e:
        yield e
        e.call_in_scheduler(lambda s: s.check_pool_invariant())


def reference(model, prompt: list[int], output: list[int]) -> torch.Tensor:
    """transformers' final hidden states over the prompt and every output token but the last."""
    with torch.no_grad():
        out = model(torch.tensor([prompt + output[:-1]]), output_hidden_states=True)
    return out.hidden_states[-1][0]


def flatten(hidden: list) -> torch.Tensor:
    """SGLang's shape: [prompt rows], then one vector per output token fed back."""
    return torch.tensor(hidden[0] + hidden[1:])


def test_prompt_and_output_positions_match_transformers(tiny, engine):
    outs = engine.generate(input_ids=PROMPTS, sampling_params=GREEDY, return_hidden_states=True)
    for prompt, out in zip(PROMPTS, outs):
        hidden = out["meta_info"]["hidden_states"]
        assert len(hidden) == GREEDY["max_new_tokens"] and len(hidden[0]) == len(prompt)
        torch.testing.assert_close(flatten(hidden), reference(tiny[1], prompt, out["output_ids"]),
                                   rtol=1e-4, atol=1e-4)


def test_cached_prefix_and_chunks_still_give_every_position(tiny, engine):
    prompt = PROMPTS[0] + [11, 12]
    warm = engine.generate(input_ids=prompt, sampling_params=GREEDY)  # puts the prompt in the cache
    again = engine.generate(input_ids=prompt, sampling_params=GREEDY)
    assert again["meta_info"]["cached_tokens"] > 0 and "hidden_states" not in again["meta_info"]
    out = engine.generate(input_ids=prompt, sampling_params=GREEDY, return_hidden_states=True)
    assert out["output_ids"] == warm["output_ids"]
    torch.testing.assert_close(flatten(out["meta_info"]["hidden_states"]),
                               reference(tiny[1], prompt, out["output_ids"]), rtol=1e-4, atol=1e-4)


def test_last_and_per_prompt_modes(tiny, engine):
    outs = engine.generate(input_ids=PROMPTS, sampling_params=GREEDY,
                           return_hidden_states=["last", False])
    ref = reference(tiny[1], PROMPTS[0], outs[0]["output_ids"])
    torch.testing.assert_close(torch.tensor(outs[0]["meta_info"]["hidden_states"]), ref[-1],
                               rtol=1e-4, atol=1e-4)
    assert "hidden_states" not in outs[1]["meta_info"]


def test_stream_carries_the_hidden_states_so_far(tiny, engine):
    full = engine.generate(input_ids=PROMPTS[1], sampling_params=GREEDY, return_hidden_states=True)
    chunks = list(engine.generate(input_ids=PROMPTS[1], sampling_params=GREEDY, stream=True,
                                  return_hidden_states=True))
    # Each chunk carries the states so far: a growing prefix of the whole. (A slow reader may
    # get two steps in one chunk, so the first chunk need not hold exactly one.)
    sizes = [len(c["meta_info"]["hidden_states"]) for c in chunks]
    assert sizes == sorted(sizes) and 1 <= sizes[0] < sizes[-1], sizes
    whole = full["meta_info"]["hidden_states"]
    for chunk, size in zip(chunks, sizes):
        torch.testing.assert_close(flatten(chunk["meta_info"]["hidden_states"]), flatten(whole[:size]))
    assert sizes[-1] == len(whole)


def test_refused_without_the_flag_and_bad_values(tiny):
    with Engine(tiny[0], skip_tokenizer_init=True) as plain:
        with pytest.raises(ValueError, match="--enable-return-hidden-states"):
            plain.generate(input_ids=PROMPTS[0], sampling_params=GREEDY, return_hidden_states=True)
        assert plain.generate(input_ids=PROMPTS[0], sampling_params=GREEDY,
                              return_hidden_states=False)["meta_info"]["completion_tokens"] == 5
    with Engine(tiny[0], skip_tokenizer_init=True, return_hidden_states_mode="last") as last:
        with pytest.raises(ValueError, match="--return-hidden-states-mode full"):
            last.generate(input_ids=PROMPTS[0], sampling_params=GREEDY, return_hidden_states=True)
        with pytest.raises(ValueError, match="return_hidden_states must be"):
            last.generate(input_ids=PROMPTS[0], sampling_params=GREEDY, return_hidden_states="all")


def test_speculative_verify_steps_keep_the_accepted_positions(tiny):
    """NGRAM drafts: a verify step runs the root and the draft nodes; only the accepted ones are
    the request's positions."""
    params = dict(GREEDY, max_new_tokens=24)
    with Engine(tiny[0], skip_tokenizer_init=True, enable_return_hidden_states=True,
                speculative_algorithm="NGRAM", speculative_num_draft_tokens=4) as spec:
        outs = spec.generate(input_ids=PROMPTS, sampling_params=params, return_hidden_states=True)
    assert sum(o["meta_info"]["spec_accepted_tokens"] for o in outs) > 0, "no draft was accepted"
    for prompt, out in zip(PROMPTS, outs):
        torch.testing.assert_close(flatten(out["meta_info"]["hidden_states"]),
                                   reference(tiny[1], prompt, out["output_ids"]), rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_steps_that_return_hidden_states_run_eagerly_and_match(tiny):
    """On a GPU the decode steps of a request asking for hidden states leave the CUDA graphs;
    the next request decodes under them again."""
    with Engine(tiny[0], skip_tokenizer_init=True, enable_return_hidden_states=True,
                device="cuda", dtype="float32") as gpu:
        out = gpu.generate(input_ids=PROMPTS[0], sampling_params=GREEDY, return_hidden_states=True)
        assert not gpu.scheduler.stats.cuda_graph_used
        plain = gpu.generate(input_ids=PROMPTS[0], sampling_params=GREEDY)
        assert gpu.scheduler.stats.cuda_graph_used and plain["output_ids"] == out["output_ids"]
    torch.testing.assert_close(flatten(out["meta_info"]["hidden_states"]),
                               reference(tiny[1], PROMPTS[0], out["output_ids"]), rtol=1e-3, atol=1e-3)


def test_constrained_request_asking_for_hidden_states_does_not_jump_forward(tmp_path):
    """Jump-forward would append forced grammar text the model never ran: a request asking for
    hidden states decodes it token by token, one vector per output token fed back."""
    from tests.runtime.test_grammar import SCHEMAS
    from tests.server.conftest import TINY_CONFIG
    (tmp_path / "config.json").write_text(json.dumps(dict(TINY_CONFIG, vocab_size=49152)))
    params = {"max_new_tokens": 96, "temperature": 0, "json_schema": json.dumps(SCHEMAS["long_keys"])}
    with Engine(str(tmp_path), load_format="dummy", tokenizer_path=bundled_model_path(),
                enable_return_hidden_states=True) as e:  # random weights, the bundled tokenizer
        jumped = e.generate("Answer in JSON:", params)
        out = e.generate("Answer in JSON:", params, return_hidden_states=True)
    assert jumped["meta_info"]["jump_forward_tokens"] > 0
    assert "jump_forward_tokens" not in out["meta_info"]
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(json.loads(out["text"]), SCHEMAS["long_keys"])
    hidden = out["meta_info"]["hidden_states"]
    assert len(hidden) == out["meta_info"]["completion_tokens"]
    assert len(hidden[0]) == out["meta_info"]["prompt_tokens"]
