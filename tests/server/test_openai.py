"""The OpenAI-compatible routes through the real `openai` client."""
from __future__ import annotations

import openai
import pytest

from tests.server.conftest import generate

MESSAGES = [{"role": "user", "content": "Name three colors."}]


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=300)


def test_models(client, model_name):
    models = client.models.list()
    assert [m.id for m in models.data] == [model_name]


def test_completion_matches_native_generate(client, server, model_name):
    res = client.completions.create(model=model_name, prompt="The sky is", max_tokens=8,
                                    temperature=0)
    native = generate(server.url, {"text": "The sky is", "sampling_params": {"temperature": 0,
                                                                             "max_new_tokens": 8}})
    choice = res.choices[0]
    assert res.object == "text_completion" and choice.text == native["text"]
    assert choice.finish_reason == native["meta_info"]["finish_reason"]["type"]
    assert res.usage.completion_tokens == native["meta_info"]["completion_tokens"]
    assert res.usage.total_tokens == res.usage.prompt_tokens + res.usage.completion_tokens


def test_completion_prompt_forms(client, model_name):
    batch = client.completions.create(model=model_name, prompt=["A", "B"], max_tokens=2,
                                      temperature=0, extra_body={"ignore_eos": True})
    assert [c.index for c in batch.choices] == [0, 1] and batch.usage.completion_tokens == 4
    ids = client.completions.create(model=model_name, prompt=[1906, 2567, 314], max_tokens=2,
                                    temperature=0, extra_body={"ignore_eos": True})
    assert ids.usage.prompt_tokens == 3 and ids.usage.completion_tokens == 2


def test_completion_stream_with_usage(client, model_name):
    kwargs = dict(model=model_name, prompt="Once upon a time", max_tokens=10, temperature=0)
    full = client.completions.create(**kwargs).choices[0].text
    chunks = list(client.completions.create(**kwargs, stream=True,
                                            stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == full and len([c for c in chunks if c.choices]) > 1
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")


def test_completion_n_and_seed(client, model_name):
    kwargs = dict(model=model_name, prompt="My favourite animal is", max_tokens=6, n=3,
                  temperature=1.0, seed=7, extra_body={"ignore_eos": True})
    first, again = client.completions.create(**kwargs), client.completions.create(**kwargs)
    assert sorted(c.index for c in first.choices) == [0, 1, 2]
    assert [c.text for c in first.choices] == [c.text for c in again.choices]
    assert first.usage.completion_tokens == 18


def test_completion_logprobs_and_echo(client, model_name):
    res = client.completions.create(model=model_name, prompt="1, 2, 3,", max_tokens=4,
                                    temperature=0, logprobs=2, echo=True)
    choice, lp = res.choices[0], res.choices[0].logprobs
    assert choice.text.startswith("1, 2, 3,")
    assert len(lp.tokens) == res.usage.prompt_tokens + res.usage.completion_tokens
    assert lp.token_logprobs[0] is None and all(x <= 0 for x in lp.token_logprobs[1:])
    assert all(len(top) <= 2 for top in lp.top_logprobs[1:])
    assert lp.text_offset == sorted(lp.text_offset) and "".join(lp.tokens) == choice.text


def test_completion_stop_string(client, model_name):
    base = client.completions.create(model=model_name, prompt="1, 2, 3,", max_tokens=12,
                                     temperature=0).choices[0].text
    stop = base.strip()[2:4] or ","
    res = client.completions.create(model=model_name, prompt="1, 2, 3,", max_tokens=12,
                                    temperature=0, stop=[stop])
    assert stop not in res.choices[0].text and res.choices[0].finish_reason == "stop"
    assert base.startswith(res.choices[0].text)


def test_chat_completion(client, model_name):
    res = client.chat.completions.create(model=model_name, messages=MESSAGES, max_tokens=12,
                                         temperature=0)
    msg = res.choices[0].message
    assert res.object == "chat.completion" and msg.role == "assistant" and msg.content
    assert res.usage.prompt_tokens > 10  # the chat template was applied
    assert res.choices[0].finish_reason in ("stop", "length")


def test_chat_stream_equals_non_stream(client, model_name):
    kwargs = dict(model=model_name, messages=MESSAGES, max_tokens=12, temperature=0)
    full = client.chat.completions.create(**kwargs)
    chunks = list(client.chat.completions.create(**kwargs, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens


def test_chat_n_and_logprobs(client, model_name):
    res = client.chat.completions.create(model=model_name, messages=MESSAGES, max_tokens=5, n=2,
                                         temperature=0, logprobs=True, top_logprobs=3,
                                         extra_body={"ignore_eos": True})
    assert len(res.choices) == 2
    assert res.choices[0].message.content == res.choices[1].message.content
    content = res.choices[0].logprobs.content
    assert len(content) == 5 and all(len(t.top_logprobs) == 3 for t in content)
    assert all(t.logprob == max(x.logprob for x in t.top_logprobs) for t in content)  # greedy
    assert "".join(t.token for t in content) == res.choices[0].message.content


def test_chat_reports_cached_tokens_on_repeat(client, model_name):
    messages = [{"role": "system", "content": "You answer in one word. " * 5}] + MESSAGES
    client.chat.completions.create(model=model_name, messages=messages, max_tokens=2)
    again = client.chat.completions.create(model=model_name, messages=messages, max_tokens=2)
    assert again.usage.prompt_tokens_details.cached_tokens > 20


def test_bad_request_raises_in_client(client, model_name):
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=model_name, prompt="x", max_tokens=-1)
    assert info.value.status_code == 400 and "max_tokens" in str(info.value)
