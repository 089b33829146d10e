"""The interpreter and ProgramState on a fake backend: text assembly, variables, roles, forks,
streaming, errors, batches."""
from __future__ import annotations

import asyncio
import re
import threading
import time

import pytest

import sgl
from tests.lang.fake_backend import FakeBackend


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


def test_text_and_gen_variables(backend):
    @sgl.function
    def prog(s, q):
        s += "Q: " + q + "\nA:" + sgl.gen("a", max_tokens=5)
        s += "!"

    state = prog.run(q="hi", backend=backend)
    assert state["a"] == "<8>"  # the fake replies with the prompt's length
    assert state.text() == "Q: hi\nA:<8>!"
    assert "a" in state and "b" not in state
    assert state.get_meta_info("a") == {"prompt_tokens": 8, "completion_tokens": 3}


def test_gen_params_override_run_defaults_and_template_stop_is_added(backend):
    @sgl.function
    def prog(s):
        s += sgl.gen("x", max_tokens=7, stop="\n") + sgl.gen("y")

    prog.run(backend=backend, max_new_tokens=3, temperature=0.0, stop=["END"])
    (_, _, p1), (_, _, p2) = backend.calls
    assert (p1.max_new_tokens, p1.temperature, p1.stop) == (7, 0.0, ["\n", "<|im_end|>"])
    assert (p2.max_new_tokens, p2.temperature, p2.stop) == (3, 0.0, ["END", "<|im_end|>"])


def test_roles_all_forms_build_template_text_and_messages(backend):
    @sgl.function
    def prog(s):
        s += sgl.system("Be brief.")
        with s.user():
            s += "Hello"
        s += sgl.user_end() if False else sgl.assistant_begin()
        s += sgl.gen("r")
        s += sgl.assistant_end()
        s.user("Again")
        s += sgl.assistant(sgl.gen("r2"))

    state = prog.run(backend=backend)
    text = state.text()
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n")
    assert [m["role"] for m in state.messages()] == ["system", "user", "assistant", "user", "assistant"]
    assert state.messages()[2]["content"] == state["r"]


def test_default_system_prompt_is_inserted_before_first_non_system_role():
    backend = FakeBackend(template="qwen")

    @sgl.function
    def prog(s):
        s += sgl.user("hi")

    msgs = prog.run(backend=backend).messages()
    assert msgs[0] == {"role": "system", "content": "You are a helpful assistant."}


def test_nested_roles_are_an_error(backend):
    @sgl.function
    def prog(s):
        s += sgl.user_begin() + sgl.assistant_begin()

    with pytest.raises(sgl.ProgramError, match="roles do not nest"):
        prog.run(backend=backend)


def test_var_scope_captures_text(backend):
    @sgl.function
    def prog(s):
        s += "a"
        with s.var_scope("mid"):
            s += "b" + sgl.gen("g")
        s += "c"

    state = prog.run(backend=backend)
    assert state["mid"] == "b<2>"


def test_fork_gather_variable_and_appends_by_expr_list_lambda(backend):
    @sgl.function
    def prog(s):
        s += "Topic."
        forks = s.fork(3)
        forks += " Tip:"
        forks += [" a", " bb", " ccc"]
        forks += lambda i: sgl.gen("tip", max_tokens=4 + i)
        forks.join()
        s += "done"

    state = prog.run(backend=backend)
    assert state["tip"] == ["<13>", "<14>", "<15>"]
    assert state.text() == "Topic.done"
    maxes = [c[2].max_new_tokens for c in backend.calls if c[0] == "generate"]
    assert sorted(maxes) == [4, 5, 6]
    assert ("commit", "Topic.", None) in backend.calls  # prefix sent once before the branches


def test_fork_concate_and_append(backend):
    @sgl.function
    def prog(s):
        s += "P:"
        forks = s.fork(2)
        forks += lambda i: f"[{i}]" + sgl.gen("x")
        forks.join(mode="concate_and_append")
        s += sgl.gen("final")

    state = prog.run(backend=backend)
    assert state.text().startswith("P:[0]<5>[1]<5>")
    assert state["final"] == f"<{len('P:[0]<5>[1]<5>')}>"


def test_fork_branches_run_concurrently():
    backend = FakeBackend(rendezvous=4)  # all four branches must be in flight together

    @sgl.function
    def prog(s):
        forks = s.fork(4)
        forks += sgl.gen("x")
        forks.join()

    prog.run(backend=backend)
    assert backend.max_active == 4


def test_copy_joins_variables_back(backend):
    @sgl.function
    def prog(s):
        s += "x"
        with s.copy() as c:
            c += "yy" + sgl.gen("inner")
        s += "z"

    state = prog.run(backend=backend)
    assert state["inner"] == ["<3>"]
    assert state.text() == "xz"


def test_bad_join_mode(backend):
    @sgl.function
    def prog(s):
        s.fork(2).join(mode="zip")

    with pytest.raises(ValueError, match="join mode"):
        prog.run(backend=backend)


def test_select_and_gen_choices(backend):
    @sgl.function
    def prog(s):
        s += sgl.select("a", choices=["no", "maybe"]) + " " + sgl.gen("b", choices=["x", "yyy"])

    state = prog.run(backend=backend)
    assert (state["a"], state["b"]) == ("maybe", "yyy")
    assert state.text() == "maybe yyy"
    assert state.get_meta_info("a") == {"scores": [2, 5]}


def test_gen_n_returns_list_and_appends_first(backend):
    @sgl.function
    def prog(s):
        s += "Q" + sgl.gen("many", n=3)

    state = prog.run(backend=backend)
    assert state["many"] == ["<1>#0", "<1>#1", "<1>#2"]
    assert state.text() == "Q<1>#0"


def test_ret_value_and_bind(backend):
    @sgl.function
    def prog(s, a, b="B"):
        s += a + b
        return a * 2

    bound = prog.bind(b="!")
    state = bound.run(a="x", backend=backend)
    assert state.ret_value == "xx" and state.text() == "x!"
    with pytest.raises(TypeError):
        prog.bind(c=1)


def test_nested_function_runs_on_enclosing_backend(backend):
    @sgl.function
    def inner(s, topic):
        s += "About " + topic + ":" + sgl.gen("out")

    @sgl.function
    def outer(s):
        s += "Outer" + sgl.gen("o")
        sub = inner(topic=s["o"])
        s += " | " + sub["out"]

    state = outer.run(backend=backend)
    assert state.text() == "Outer<5> | <10>"  # "About <5>:" has 10 characters


def test_backend_error_surfaces_on_run_and_nothing_hangs():
    backend = FakeBackend(fail_on="BOOM")

    @sgl.function
    def prog(s):
        s += "BOOM" + sgl.gen("x")
        s += sgl.gen("y")

    with pytest.raises(sgl.ProgramError, match="backend failure"):
        prog.run(backend=backend)


def test_error_in_fork_branch_surfaces_at_join():
    backend = FakeBackend(fail_on="[1]")

    @sgl.function
    def prog(s):
        forks = s.fork(2)
        forks += lambda i: f"[{i}]" + sgl.gen("x")
        forks.join()

    with pytest.raises(sgl.ProgramError, match="backend failure"):
        prog.run(backend=backend)


def test_error_on_stream_state_surfaces_on_sync_and_reads():
    backend = FakeBackend(fail_on="BOOM")

    @sgl.function
    def prog(s):
        s += "BOOM" + sgl.gen("x")

    state = prog.run(backend=backend, stream=True)
    with pytest.raises(sgl.ProgramError, match="backend failure"):
        state.sync()
    assert isinstance(state.error(), RuntimeError)
    with pytest.raises(sgl.ProgramError):
        state["x"]
    with pytest.raises(sgl.ProgramError):
        list(state.text_iter("x"))


def test_invalid_regex_fails_at_gen():
    with pytest.raises(re.error):
        sgl.gen("x", regex="(unclosed")


def test_image_and_video_are_not_implemented():
    with pytest.raises(NotImplementedError, match="multimodal"):
        sgl.image("a.png")
    with pytest.raises(NotImplementedError):
        sgl.video("a.mp4", 4)


def test_text_iter_streams_pieces_of_program_and_variable():
    backend = FakeBackend(reply=lambda p, sp: "abcdef", delay_s=0.01)

    @sgl.function
    def prog(s):
        s += "X" + sgl.gen("v") + "Y"

    state = prog.run(backend=backend, stream=True)
    pieces = list(state.text_iter("v"))
    assert "".join(pieces) == "abcdef" and len(pieces) > 1
    state2 = prog.run(backend=backend, stream=True)
    assert "".join(state2.text_iter()) == "XabcdefY"


def test_streamed_state_reads_wait_for_the_whole_program():
    backend = FakeBackend(delay_s=0.02)

    @sgl.function
    def prog(s):
        s += "Q:" + sgl.gen("first")
        forks = s.fork(2)  # the function blocks here while the caller already reads the state
        forks += lambda i: f"[{i}]" + sgl.gen("fact")
        forks.join()
        s += "end" + sgl.gen("last")

    plain = prog.run(backend=backend)
    streamed = prog.run(backend=backend, stream=True)
    assert "".join(streamed.text_iter("first")) == plain["first"]
    assert streamed["fact"] == plain["fact"] and len(plain["fact"]) == 2  # made by the join
    streamed = prog.run(backend=backend, stream=True)
    streamed.sync()
    assert streamed.text() == plain.text() and streamed["last"] == plain["last"]


def test_text_async_iter_with_metadata():
    backend = FakeBackend(reply=lambda p, sp: "abc", delay_s=0.01)

    @sgl.function
    def prog(s):
        s += "X" + sgl.gen("v")

    async def collect():
        state = prog.run(backend=backend, stream=True)
        return [item async for item in state.text_async_iter("v", return_meta_data=True)]

    items = asyncio.run(collect())
    assert "".join(t for t, _ in items) == "abc"
    assert items[-1][1] == {"completion_tokens": 3}


def test_run_batch_order_threads_progress_and_generator(backend, capsys):
    @sgl.function
    def prog(s, q):
        s += q + sgl.gen("a")

    qs = [{"q": "x" * i} for i in range(1, 8)]
    states = prog.run_batch(qs, backend=backend, progress_bar=True, num_threads=3)
    assert [st["a"] for st in states] == [f"<{i}>" for i in range(1, 8)]
    assert "7/7" in capsys.readouterr().err
    gen_states = prog.run_batch([("y",), ("yy",)], backend=backend, generator_style=True)
    assert not isinstance(gen_states, list)
    assert [st["a"] for st in gen_states] == ["<1>", "<2>"]


def test_run_batch_keeps_errors_per_program():
    backend = FakeBackend(fail_on="BAD")

    @sgl.function
    def prog(s, q):
        s += q + sgl.gen("a")

    states = prog.run_batch([{"q": "ok"}, {"q": "BAD"}, {"q": "fine"}], backend=backend)
    assert states[0]["a"] == "<2>" and states[2]["a"] == "<4>"
    assert states[1].error() is not None


def test_run_batch_precaches_long_constant_prefix(backend):
    preamble = "You are a careful assistant. " * 4

    @sgl.function
    def prog(s, q):
        s += preamble + "Q: " + q + sgl.gen("a")

    prog.run_batch([{"q": "a"}, {"q": "b"}], backend=backend)
    assert backend.cached == [preamble + "Q: "]


def test_default_backend_and_missing_backend(backend):
    @sgl.function
    def prog(s):
        s += sgl.gen("a")

    sgl.set_default_backend(None)
    with pytest.raises(ValueError, match="no backend"):
        prog.run()
    sgl.set_default_backend(backend)
    try:
        assert prog.run()["a"] == "<0>"
    finally:
        sgl.set_default_backend(None)


def test_appending_none_is_an_error(backend):
    @sgl.function
    def prog(s):
        s += None

    with pytest.raises(ValueError):
        prog.run(backend=backend)


def test_worker_threads_end_after_run(backend):
    before = threading.active_count()

    @sgl.function
    def prog(s):
        forks = s.fork(3)
        forks += sgl.gen("x")
        forks.join()

    for _ in range(5):
        prog.run(backend=backend)
    time.sleep(0.2)
    assert threading.active_count() <= before + 1
