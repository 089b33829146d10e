"""Request building and select scoring shared by the local and HTTP backends, the choice
methods, and chat templates; no model involved."""
from __future__ import annotations

import jinja2
import pytest

import sgl
from sgl.lang.backends.srt import SrtBackend, choice_token_logprobs
from sgl.lang.chat_template import (
    chat_template_from_jinja,
    get_chat_template,
    get_chat_template_by_model_path,
)
from sgl.lang.choices import (
    greedy_token_selection,
    token_length_normalized,
    unconditional_likelihood_normalized,
)
from sgl.lang.ir import REGEX_INT


class RecordingSrt(SrtBackend):
    """Answers /generate payloads from a function and records them."""

    def __init__(self, answer):
        super().__init__()
        self.answer = answer
        self.sent = []

    def _send(self, data):
        self.sent.append(data)
        return self.answer(data)


def test_gen_payload_carries_sglang_fields():
    backend = RecordingSrt(lambda d: {"text": "42", "meta_info": {"prompt_tokens": 3}})

    @sgl.function
    def prog(s):
        s += "n=" + sgl.gen_int("n", max_tokens=4, return_logprob=True, top_logprobs_num=2)

    state = prog.run(backend=backend, temperature=0.0)
    (data,) = backend.sent
    assert data["text"] == "n="
    sp = data["sampling_params"]
    assert sp["regex"] == REGEX_INT and sp["max_new_tokens"] == 4 and sp["temperature"] == 0.0
    assert " " in sp["stop"] and "\n" in sp["stop"] and sp["skip_special_tokens"] is True
    assert data["return_logprob"] is True and data["top_logprobs_num"] == 2
    assert state["n"] == "42"


def test_json_schema_dict_is_sent_as_string():
    backend = RecordingSrt(lambda d: {"text": "{}", "meta_info": {}})

    @sgl.function
    def prog(s):
        s += sgl.gen("j", json_schema={"type": "object"})

    prog.run(backend=backend)
    assert backend.sent[0]["sampling_params"]["json_schema"] == '{"type": "object"}'


def _entries(*pairs):
    return [(lp, i, text) for i, (lp, text) in enumerate(pairs)]


def test_choice_tokens_with_and_without_token_healing():
    # prompt "Answer:" + " yes": the choice is its own token
    plain = _entries((-1.0, "Answer"), (-2.0, ":"), (-0.5, " yes"))
    assert choice_token_logprobs(plain, " yes") == [plain[2]]
    # prompt "Answer: " + "yes": the prompt's trailing space merges into " yes" (healed)
    healed = _entries((-1.0, "Answer"), (-2.0, ":"), (-0.7, " yes"))
    assert choice_token_logprobs(healed, "yes") == [healed[2]]
    # a multi-token choice
    multi = _entries((-1.0, "A"), (-0.1, " mo"), (-0.2, "zz"), (-0.3, "arella"))
    assert choice_token_logprobs(multi, " mozzarella") == multi[1:]


def test_select_request_sequence_and_scoring():
    def answer(data):
        if isinstance(data.get("text"), str):
            return {"text": "", "meta_info": {"prompt_tokens": 5}}
        if "input_ids" in data:  # unconditional scoring
            return [{"meta_info": {"input_token_logprobs": [(None, ids[0], None)] +
                                   [(-1.0, t, None) for t in ids[1:]]}} for ids in data["input_ids"]]
        lps = {"Q: x? A: yes": [(-0.5, 7, " yes")], "Q: x? A: no": [(-0.2, 8, " no")],
               "Q: x? A: maybe so": [(-0.1, 9, " maybe"), (-3.0, 10, " so")]}
        return [{"meta_info": {"input_token_logprobs": [(-1.0, 1, " A"), (-1.0, 2, ":")] + lps[t],
                               "output_token_logprobs": []}} for t in data["text"]]

    backend = RecordingSrt(answer)

    @sgl.function
    def prog(s, method):
        s += "Q: x? A:" + sgl.select("a", choices=[" yes", " no", " maybe so"], choices_method=method)

    state = prog.run(method=token_length_normalized, backend=backend)
    assert state["a"] == " no"  # means: -0.5, -0.2, -1.55
    first, batch = backend.sent
    assert first == {"text": "Q: x? A:", "sampling_params": {"max_new_tokens": 0}}
    assert batch["logprob_start_len"] == 3 and batch["return_text_in_logprobs"] is True
    assert state.get_meta_info("a")["normalized_prompt_logprobs"] == [-0.5, -0.2, -1.55]
    assert prog.run(method=greedy_token_selection, backend=backend)["a"] == " maybe so"
    state = prog.run(method=unconditional_likelihood_normalized, backend=backend)
    unc = backend.sent[-1]
    assert unc["input_ids"] == [[7], [8], [9, 10]] and unc["logprob_start_len"] == 0
    # gains: -0.5-0, -0.2-0, mean(-0.1-0, -3.0+1.0) = -1.05
    assert state["a"] == " no"
    assert state.get_meta_info("a")["normalized_unconditional_prompt_logprobs"] == pytest.approx([-0.5, -0.2, -1.05])


def test_select_rejects_temperature():
    backend = RecordingSrt(lambda d: {"text": "", "meta_info": {"prompt_tokens": 1}})

    @sgl.function
    def prog(s):
        s += "x" + sgl.select("a", choices=["1", "2"], temperature=0.7)

    with pytest.raises(sgl.ProgramError, match="temperature"):
        prog.run(backend=backend)


def test_greedy_selection_pads_shorter_choice_with_its_mean():
    rows = [[(-1.0, 0, "a")], [(-1.0, 0, "a"), (-0.5, 1, "b")], [(-2.0, 0, "c")]]
    out = greedy_token_selection(choices=["a", "ab", "c"], normalized_prompt_logprobs=[0, 0, 0],
                                 input_token_logprobs=rows, output_token_logprobs=[[], [], []])
    assert out.meta_info["greedy_logprob_matrix"] == [[-1.0, -1.0], [-1.0, -0.5], [-2.0, -2.0]]
    assert out.decision == "ab"


def test_unconditional_needs_logprobs():
    with pytest.raises(ValueError):
        unconditional_likelihood_normalized(choices=["a"], normalized_prompt_logprobs=[0.0],
                                            input_token_logprobs=[[(-1.0, 0, "a")]],
                                            output_token_logprobs=[[]])


def test_chat_template_registry_and_matching():
    assert get_chat_template_by_model_path("meta-llama/Meta-Llama-3-8B-Instruct").name == "llama-3-instruct"
    assert get_chat_template_by_model_path("meta-llama/Llama-2-7b-chat-hf").name == "llama-2-chat"
    assert get_chat_template_by_model_path("Qwen/Qwen2.5-0.5B-Instruct").name == "qwen"
    assert get_chat_template_by_model_path("mistralai/Mistral-7B-Instruct-v0.2").name == "mistral"
    assert get_chat_template_by_model_path("x/SmolLM2-135M-Instruct.Q4_1.gguf").name == "smollm2"
    assert get_chat_template_by_model_path("some/base-model").name == "default"
    with pytest.raises(ValueError, match="unknown chat template"):
        get_chat_template("nope")
    llama2 = get_chat_template("llama-2-chat")
    prompt = llama2.get_prompt([{"role": "system", "content": "S"}, {"role": "user", "content": "U"},
                                {"role": "assistant", "content": "A"}, {"role": "user", "content": "V"}])
    assert prompt == "<s>[INST] <<SYS>>\nS\n<</SYS>>\n\nU [/INST]A </s>[INST] V [/INST]"


class JinjaTokenizer:
    def __init__(self, source):
        self.chat_template = source
        self._template = jinja2.Environment(trim_blocks=True, lstrip_blocks=True).from_string(source)

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False):
        return self._template.render(messages=messages, add_generation_prompt=add_generation_prompt)


SMOL_LIKE = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
             "{{ '<|im_start|>system\\nDefault prompt<|im_end|>\\n' }}{% endif %}"
             "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
             "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def test_template_derived_from_jinja():
    t = chat_template_from_jinja(JinjaTokenizer(SMOL_LIKE))
    assert t.role_prefix_and_suffix["user"] == ("<|im_start|>user\n", "<|im_end|>\n")
    assert t.default_system_prompt == "Default prompt"
    assert t.stop_str == ("<|im_end|>",)


def test_undecomposable_jinja_falls_back():
    # Llama-2 style: the system message is folded into the first user turn
    llama2_like = ("{% if messages[0]['role'] == 'system' %}{% set sys = messages[0]['content'] %}"
                   "{% set msgs = messages[1:] %}{% else %}{% set sys = '' %}{% set msgs = messages %}{% endif %}"
                   "{% for m in msgs %}{% if m['role'] == 'user' %}[INST] {% if loop.first and sys %}"
                   "<<SYS>>{{ sys }}<</SYS>> {% endif %}{{ m['content'] }} [/INST]"
                   "{% else %}{{ m['content'] }}</s>{% endif %}{% endfor %}")
    assert chat_template_from_jinja(JinjaTokenizer(llama2_like)) is None
