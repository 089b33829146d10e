"""The language on the in-process engine with the bundled SmolLM2-135M (greedy decoding)."""
from __future__ import annotations

import asyncio
import json
import re

import pytest

import sgl
from sgl.lang.choices import greedy_logprob_matrix

engine_mod = pytest.importorskip("sgl.runtime.engine")

GREEDY = {"temperature": 0.0}


def engine_text(engine, prompt: str, max_new_tokens: int, stop=("<|im_end|>",)) -> str:
    return engine.generate(prompt, {"max_new_tokens": max_new_tokens, "temperature": 0.0,
                                    "stop": list(stop)})["text"]


def test_gen_equals_engine_output_and_has_meta_info(engine, backend):
    @sgl.function
    def prog(s, subject):
        s += "The capital of " + subject + " is" + sgl.gen("a", max_tokens=6)

    state = prog.run(subject="France", backend=backend, **GREEDY)
    assert state["a"] == engine_text(engine, "The capital of France is", 6)
    assert state.text() == "The capital of France is" + state["a"]
    meta = state.get_meta_info("a")
    assert meta["prompt_tokens"] == 5 and meta["completion_tokens"] >= 1
    assert meta["finish_reason"]["type"] in ("length", "stop")


def test_gen_sampling_params_reach_the_engine(backend):
    @sgl.function
    def prog(s):
        s += "Count: one, two," + sgl.gen("a", max_tokens=12, stop=",", return_logprob=True,
                                           top_logprobs_num=2, return_text_in_logprobs=True)
        s += " then" + sgl.gen("b", max_tokens=3, min_tokens=3, ignore_eos=True)

    state = prog.run(backend=backend, **GREEDY)
    assert "," not in state["a"]
    meta = state.get_meta_info("a")
    assert len(meta["output_token_logprobs"]) == meta["completion_tokens"]
    assert all(len(top) == 2 for top in meta["output_top_logprobs"])
    assert state.get_meta_info("b")["completion_tokens"] == 3


def test_chat_text_matches_tokenizer_template(engine, backend):
    @sgl.function
    def chat(s, q):
        s += sgl.user(q)
        s += sgl.assistant(sgl.gen("answer", max_tokens=8))

    state = chat.run(q="Say hi.", backend=backend, **GREEDY)
    msgs = state.messages()
    assert [m["role"] for m in msgs] == ["system", "user", "assistant"]
    head = engine.tokenizer.apply_chat_template(msgs[:2], tokenize=False, add_generation_prompt=True)
    assert state.text() == head + state["answer"] + "<|im_end|>\n"
    assert state["answer"] == engine_text(engine, head, 8)


def test_state_methods_roles_scopes_copy_and_bind(engine, backend):
    @sgl.function
    def prog(s, q, style):
        s += sgl.system_begin() + "Answer " + style + "." + sgl.system_end()
        with s.user():
            s += q
        with s.var_scope("turn"):
            s += sgl.assistant_begin() + sgl.gen("a", max_tokens=5) + sgl.assistant_end()
        with s.copy() as c:
            c += sgl.user("Again?") + sgl.assistant(sgl.gen("again", max_tokens=3))
        return len(s["a"])

    state = prog.bind(style="briefly").run(q="What is 2+2?", backend=backend, **GREEDY)
    state.sync()
    assert state.error() is None
    assert "a" in state and "turn" in state and "nope" not in state
    assert state["turn"] == "<|im_start|>assistant\n" + state["a"] + "<|im_end|>\n"
    assert state.ret_value == len(state["a"])
    assert len(state["again"]) == 1 and state["again"][0]
    assert [m["role"] for m in state.messages()] == ["system", "user", "assistant"]
    assert state.messages()[0]["content"] == "Answer briefly."
    head = engine.tokenizer.apply_chat_template(state.messages()[:2], tokenize=False, add_generation_prompt=True)
    assert state["a"] == engine_text(engine, head, 5)


def _manual_choice_logprobs(engine, prompt: str, choices: list[str]) -> list[list[tuple]]:
    """Independent oracle: token ids of prompt+choice after the longest common prefix with the
    prompt's own ids, with their logprobs (from logprob_start_len=0)."""
    def ids_and_lps(text):
        out = engine.generate(text, {"max_new_tokens": 0}, return_logprob=True, logprob_start_len=0)
        return out["meta_info"]["input_token_logprobs"]

    prompt_ids = [e[1] for e in ids_and_lps(prompt)]
    rows = []
    for c in choices:
        full = ids_and_lps(prompt + c)
        common = 0
        while common < min(len(prompt_ids), len(full)) and prompt_ids[common] == full[common][1]:
            common += 1
        rows.append([(e[0], e[1]) for e in full[common:]])
    return rows


@pytest.mark.parametrize("prompt", ["Is the sky blue? Answer:", "Is the sky blue? Answer: "])
def test_select_methods_equal_manual_computation(engine, backend, prompt):
    choices = [" yes", " no", " maybe not"] if not prompt.endswith(" ") else ["yes", "no", "maybe not"]
    manual = _manual_choice_logprobs(engine, prompt, choices)
    means = [sum(lp for lp, _ in row) / len(row) for row in manual]

    @sgl.function
    def prog(s, method):
        s += prompt + sgl.select("c", choices=choices, choices_method=method)

    state = prog.run(method=sgl.token_length_normalized, backend=backend)
    meta = state.get_meta_info("c")
    assert [[e[1] for e in row] for row in meta["input_token_logprobs"]] == [[i for _, i in r] for r in manual]
    assert meta["normalized_prompt_logprobs"] == pytest.approx(means, abs=1e-3)
    assert state["c"] == choices[max(range(3), key=lambda i: means[i])]

    state = prog.run(method=sgl.greedy_token_selection, backend=backend)
    matrix = greedy_logprob_matrix([[(lp, i, None) for lp, i in r] for r in manual])
    alive = [0, 1, 2]
    for col in range(len(matrix[0])):
        best = max(matrix[i][col] for i in alive)
        alive = [i for i in alive if abs(matrix[i][col] - best) < 1e-4]
        if len(alive) == 1:
            break
    assert state["c"] == choices[alive[0]]

    unconditional = [engine.generate(input_ids=[i for _, i in r], sampling_params={"max_new_tokens": 0},
                                     return_logprob=True, logprob_start_len=0)["meta_info"]["input_token_logprobs"]
                     for r in manual]
    gains = [sum(lp - (u[0] or 0.0) for (lp, _), u in zip(r, un)) / len(r) for r, un in zip(manual, unconditional)]
    state = prog.run(method=sgl.unconditional_likelihood_normalized, backend=backend)
    assert state.get_meta_info("c")["normalized_unconditional_prompt_logprobs"] == pytest.approx(gains, abs=1e-3)
    assert state["c"] == choices[max(range(3), key=lambda i: gains[i])]


def test_fork_join_both_modes(engine, backend):
    @sgl.function
    def tips(s, mode):
        s += "Two tips for staying healthy.\n"
        forks = s.fork(2)
        forks += lambda i: f"Tip {i + 1}:" + sgl.gen("tip", max_tokens=5, stop="\n")
        forks.join(mode=mode)

    state = tips.run(mode="gather_variable", backend=backend, **GREEDY)
    base = "Two tips for staying healthy.\n"
    expected = [engine.generate(base + f"Tip {i}:", {"max_new_tokens": 5, "temperature": 0,
                                                        "stop": ["\n", "<|im_end|>"]})["text"] for i in (1, 2)]
    assert state["tip"] == expected
    assert state.text() == base
    state = tips.run(mode="concate_and_append", backend=backend, **GREEDY)
    assert state.text() == base + f"Tip 1:{expected[0]}Tip 2:{expected[1]}"


def test_nested_function_and_run_batch(engine, backend):
    @sgl.function
    def capital(s, country):
        s += "The capital of " + country + " is" + sgl.gen("city", max_tokens=4, stop=[".", "\n"])

    @sgl.function
    def two(s):
        a = capital("France")
        b = capital("Italy")
        s += a["city"] + " /" + b["city"]

    assert two.run(backend=backend, **GREEDY).text() == (
        engine_text(engine, "The capital of France is", 4, (".", "\n", "<|im_end|>")) + " /"
        + engine_text(engine, "The capital of Italy is", 4, (".", "\n", "<|im_end|>")))
    states = capital.run_batch([{"country": c} for c in ("France", "Italy", "Spain")], backend=backend,
                               progress_bar=False, **GREEDY)
    singles = [capital.run(country=c, backend=backend, **GREEDY)["city"] for c in ("France", "Italy", "Spain")]
    assert [st["city"] for st in states] == singles


def test_streaming_text_iter_and_async_with_meta(backend):
    @sgl.function
    def prog(s):
        s += "List three colors:" + sgl.gen("colors", max_tokens=10)

    full = prog.run(backend=backend, **GREEDY)["colors"]
    state = prog.run(backend=backend, stream=True, **GREEDY)
    pieces = list(state.text_iter("colors"))
    assert "".join(pieces) == full and len(pieces) > 1

    async def collect():
        st = prog.run(backend=backend, stream=True, **GREEDY)
        return [item async for item in st.text_async_iter("colors", return_meta_data=True)]

    items = asyncio.run(collect())
    assert "".join(t for t, _ in items) == full
    counts = [m["completion_tokens"] for _, m in items]
    assert counts == sorted(counts) and counts[-1] >= len(items)
    whole = prog.run(backend=backend, stream=True, **GREEDY)
    assert "".join(whole.text_iter()) == "List three colors:" + full


def test_compiled_fork_program_graph_and_results(backend):
    @sgl.function
    def tips(s, topic):
        s += "Two tips about " + topic + ".\n"
        forks = s.fork(2)
        forks += lambda i: f"Tip {i + 1}:" + sgl.gen("tip", max_tokens=5, stop="\n")
        forks.join()
        s += "In short:" + sgl.gen("summary", max_tokens=5)

    compiled = tips.compile(backend=backend)
    assert sorted(compiled.streams) == [0, 1, 2]
    assert [type(n.expr).__name__ for n in compiled.streams[1]] == ["SglGetForkItem", "SglConstantText", "SglGen"]
    expected = tips.run(topic="sleep", backend=backend, **GREEDY)
    got = compiled.run(topic="sleep", backend=backend, **GREEDY)
    assert got["tip"] == expected["tip"] and got["summary"] == expected["summary"]
    assert got.text() == expected.text()


def _cached_ratio(backend) -> tuple[float, int]:
    @sgl.function
    def fan_out(s, question):
        s += "You are a careful reviewer. Read the notes and answer briefly. " * 6
        s += "Question: " + question + "\n"
        forks = s.fork(4)
        forks += lambda i: f"Reviewer {i}:" + sgl.gen("view", max_tokens=3)
        forks.join()

    metas = []
    for q in ("Is tea healthy?", "Is coffee healthy?"):
        state = fan_out.run(question=q, backend=backend, **GREEDY)
        metas += state.get_meta_info("view")
    prompt = sum(m["prompt_tokens"] for m in metas)
    return sum(m["cached_tokens"] for m in metas) / prompt, prompt


def test_fork_heavy_program_reuses_cache(backend):
    backend.flush_cache()
    with_cache, prompt_tokens = _cached_ratio(backend)
    no_radix = sgl.LocalBackend(engine_mod.Engine(disable_radix_cache=True))
    try:
        without, same_prompt_tokens = _cached_ratio(no_radix)
    finally:
        no_radix.engine.shutdown()
    assert prompt_tokens == same_prompt_tokens
    assert with_cache > 0.8, with_cache
    assert without == 0.0, without


def test_errors_surface_with_the_engine_message(backend):
    @sgl.function
    def prog(s):
        s += "Hello" + sgl.gen("a", max_tokens=4, top_p=5.0)

    with pytest.raises(sgl.ProgramError, match="top_p"):
        prog.run(backend=backend)


def _engine_honors_regex(engine) -> bool:
    out = engine.generate("My favourite number:", {"max_new_tokens": 4, "temperature": 0, "regex": "[0-9]{3}"})
    return re.fullmatch("[0-9]{3}", out["text"]) is not None


def test_regex_json_schema_and_gen_int(engine, backend):
    if not _engine_honors_regex(engine):
        pytest.skip("the engine does not apply regex constraints yet (grammar backend not wired)")
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8},
                                               "age": {"type": "integer"}}, "required": ["name", "age"]}

    @sgl.function
    def prog(s):
        s += "Alice is 31 years old. Age: " + sgl.gen_int("age", max_tokens=4)
        s += "\nA phone-like code: " + sgl.gen("code", regex=r"[0-9]{3}-[0-9]{4}", max_tokens=10)
        s += "\nAs JSON: " + sgl.gen("json", json_schema=schema, max_tokens=30)
        s += "\nName in quotes: " + sgl.gen_string("q", max_tokens=10)

    state = prog.run(backend=backend, **GREEDY)
    assert re.fullmatch(r"[-+]?[0-9]+", state["age"])
    assert re.fullmatch(r"[0-9]{3}-[0-9]{4}", state["code"])
    obj = json.loads(state["json"])
    assert set(obj) == {"name", "age"} and isinstance(obj["age"], int)
    # A string has no length bound: within the token budget it is a valid prefix, and a
    # complete string once the grammar finished it.
    if state.get_meta_info("q")["finish_reason"]["type"] == "stop":
        assert isinstance(json.loads(state["q"]), str)  # a JSON string literal
    else:
        assert state["q"].startswith('"') and not any(ord(c) < 0x20 for c in state["q"])


def test_server_info_flush_and_default_backend(engine, backend):
    sgl.set_default_backend(engine)  # an Engine is wrapped in a LocalBackend
    try:
        assert sgl.get_server_info()["model_path"] == engine.model_path
        assert sgl.flush_cache() is True
    finally:
        sgl.set_default_backend(None)


def test_runtime_endpoint_gives_the_same_results_as_local(engine, backend):
    """RuntimeEndpoint through a minimal native-protocol proxy in front of the same engine."""
    from sgl.lang.backends.local import _engine_kwargs
    from tests.lang.fake_http import FakeServer

    def answer(path, body):
        if path == "/get_model_info":
            return engine.get_model_info()
        if not body.get("stream"):
            return engine.generate(**_engine_kwargs(body))
        text, events = "", []
        for chunk in engine.generate(**_engine_kwargs(body)):
            text += chunk["text"]
            events.append({"text": text, "meta_info": chunk["meta_info"]})
        return events

    @sgl.function
    def prog(s):
        s += sgl.user("Name a fruit.")
        s += sgl.assistant(sgl.gen("fruit", max_tokens=6))
        s += sgl.user("Is it sweet?")
        s += sgl.assistant(sgl.select("sweet", choices=["yes", "no"]))
        forks = s.fork(2)
        forks += lambda i: f"Fact {i}:" + sgl.gen("fact", max_tokens=4)
        forks.join()

    server = FakeServer(answer)
    try:
        remote = sgl.RuntimeEndpoint(server.url)
        assert remote.get_chat_template().role_prefix_and_suffix == backend.get_chat_template().role_prefix_and_suffix
        a = prog.run(backend=backend, **GREEDY)
        b = prog.run(backend=remote, **GREEDY)
        assert (a.text(), a["fact"]) == (b.text(), b["fact"])
        streamed = prog.run(backend=remote, stream=True, **GREEDY)
        assert "".join(streamed.text_iter("fruit")) == a["fruit"]
    finally:
        server.close()
