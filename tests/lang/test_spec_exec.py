"""API speculative execution (`num_api_spec_tokens`) on a fake completion model: how many
backend calls a program makes, and that its variables are what plain execution gives."""
from __future__ import annotations

from typing import Any

import pytest

import sgl
from sgl.lang.ir import SglSamplingParams
from tests.lang.fake_backend import FakeBackend

# The fake model fills in this form: after a label it gives the answer, then goes on writing
# the rest of the form. "Born:" is answered like "Birthday:" but is not what it writes next.
FORM = [("Name:", " Ada"), ("Birthday:", " 1815"), ("Job:", " Countess")]
LABEL_INDEX = {"Name:": 0, "Birthday:": 1, "Born:": 1, "Job:": 2}


class FormModel(FakeBackend):
    """A completion model whose tokens are characters; reports finish_reason like OpenAI."""

    def __init__(self, is_chat_model: bool = False) -> None:
        super().__init__(template="default")
        self.is_chat_model = is_chat_model

    def generate(self, s: Any, sampling_params: SglSamplingParams) -> tuple[str, dict]:
        self.calls.append(("generate", s.text_, sampling_params))
        i = LABEL_INDEX[s.text_.rsplit("\n", 1)[-1]]
        full = FORM[i][1] + "".join(f"\n{label}{answer}" for label, answer in FORM[i + 1:]) + "\n"
        end = min([full.find(x) for x in sampling_params.stop if x in full], default=len(full))
        text = full[:end][:sampling_params.max_new_tokens]
        return text, {"finish_reason": "length" if len(text) < end else "stop"}


def form_program(spec: int | None, second_label: str = "Birthday:", **birthday_kwargs: Any) -> Any:
    @sgl.function(num_api_spec_tokens=spec)
    def prog(s):
        s += "Fill in the form.\nName:" + sgl.gen("name", max_tokens=16, stop="\n")
        s += "\n" + second_label + sgl.gen("birthday", max_tokens=16, stop="\n", **birthday_kwargs)
        s += "\nJob:" + sgl.gen("job", max_tokens=16, stop="\n") + "\n"
    return prog


def run(prog: Any, backend: FormModel) -> tuple[dict[str, str], str, int]:
    state = prog.run(backend=backend)
    return {k: state[k] for k in ("name", "birthday", "job")}, state.text(), len(backend.calls)


EXPECTED = {"name": " Ada", "birthday": " 1815", "job": " Countess"}


def test_without_spec_tokens_each_gen_is_one_call():
    assert run(form_program(None), FormModel())[0::2] == (EXPECTED, 3)


def test_matching_speculation_serves_all_gens_with_one_call():
    backend = FormModel()
    state = form_program(64).run(backend=backend)
    plain_text = run(form_program(None), FormModel())[1]
    assert len(backend.calls) == 1
    assert {k: state[k] for k in EXPECTED} == EXPECTED and state.text() == plain_text
    (_, prompt, params), = backend.calls
    assert prompt == "Fill in the form.\nName:"
    assert (params.max_new_tokens, params.stop) == (64, [])  # max(gen's 16, 64), no stop
    assert state.get_meta_info("name") == {"finish_reason": "stop"}  # the gen that made the call
    assert state.get_meta_info("job") == {}


def test_mismatched_constant_text_falls_back_to_a_new_call():
    values, text, num_calls = run(form_program(64, "Born:"), FormModel())
    assert values == EXPECTED and num_calls == 2  # "\nBorn:" != speculated "\nBirthday:"
    assert text == run(form_program(None, "Born:"), FormModel())[1]


def test_speculation_cut_mid_value_is_not_returned_truncated():
    # 16 characters: " Ada\nBirthday: 1" ends inside the birthday, so it is asked for again
    values, text, num_calls = run(form_program(16), FormModel())
    assert values == EXPECTED and num_calls == 3
    assert text == run(form_program(None), FormModel())[1]


def test_regex_gen_calls_the_backend_and_keeps_a_matching_buffer():
    backend = FormModel()
    values, _, num_calls = run(form_program(64, regex=r" \d+"), backend)
    assert values == EXPECTED and num_calls == 2  # job is still served from the first call
    assert backend.calls[1][2].regex == r" \d+" and backend.calls[1][2].max_new_tokens == 16


@pytest.mark.parametrize("kwargs", [{"stream": True}, {}])
def test_chat_models_and_streams_do_not_speculate(kwargs):
    backend = FormModel(is_chat_model=not kwargs)
    if kwargs:  # streamed runs go through generate_stream: count those calls
        backend.generate_stream = _stream_of(backend)
    state = form_program(64).run(backend=backend, **kwargs)
    state.sync()
    assert {k: state[k] for k in EXPECTED} == EXPECTED and len(backend.calls) == 3


def _stream_of(backend: FormModel) -> Any:
    def generate_stream(s: Any, sampling_params: SglSamplingParams):
        text, meta = backend.generate(s, sampling_params)
        yield text, meta
    return generate_stream
