"""Function calling: the tool-call parsers on hand-written outputs, the grammars that force
calls, streaming of calls, the fallback tools prompt (no server); then tools through the real
`openai` client against the live server (temperature 1 with seeds: the grammar does the work)."""
from __future__ import annotations

import json
import re
import time

import jsonschema
import openai
import pytest
import requests

from sgl.runtime.server.tools import (
    ToolStream,
    calls_as_text,
    default_parser_name,
    parser_class,
    render_with_tools,
    tool_call_constraint,
)
from sgl.runtime.server.tools.parsers import Llama3Parser, Qwen25Parser, SmolLM2Parser

WEATHER = {"type": "object", "properties": {
    "city": {"type": "string", "minLength": 1, "maxLength": 16},
    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"], "additionalProperties": False}
ADD = {"type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 999},
                                        "b": {"type": "integer", "minimum": 0, "maximum": 999}},
       "required": ["a", "b"], "additionalProperties": False}
SCHEMAS = {"get_weather": WEATHER, "add": ADD}
TOOLS = [{"type": "function", "function": {"name": name, "description": f"the {name} tool",
                                           "parameters": schema}}
         for name, schema in SCHEMAS.items()]
PARIS = {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}
SUM = {"name": "add", "arguments": {"a": 2, "b": 3}}


def _calls(result):
    return [(c.name, json.loads(c.arguments)) for c in result.calls]


# ---- parsers on hand-written outputs ----------------------------------------------------------

SMOL = SmolLM2Parser(SCHEMAS)
QWEN = Qwen25Parser(SCHEMAS)
LLAMA = Llama3Parser(SCHEMAS)

# (parser, output, expected content, expected calls as (name, arguments))
PARSE_CASES = [
    (SMOL, '<tool_call>[{"name": "add", "arguments": {"a": 2, "b": 3}}]</tool_call>',
     "", [("add", {"a": 2, "b": 3})]),
    (SMOL, ('<tool_call>[\n{"name": "add", "arguments": {"a": 2, "b": 3}},\n'
            '{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "celsius"}}\n]'
            '</tool_call>'),
     "", [("add", {"a": 2, "b": 3}), ("get_weather", {"city": "Oslo", "unit": "celsius"})]),
    (SMOL, 'Let me add.\n<tool_call>{"name": "add", "arguments": {"a": 1, "b": 1}}</tool_call>',
     "Let me add.", [("add", {"a": 1, "b": 1})]),
    (SMOL, '<tool_call>[{"name": "add", "arguments": {"a": 2, </tool_call>',
     '<tool_call>[{"name": "add", "arguments": {"a": 2, </tool_call>', []),
    (SMOL, '<tool_call>[{"name": "rm_rf", "arguments": {}}]</tool_call>',
     '<tool_call>[{"name": "rm_rf", "arguments": {}}]</tool_call>', []),
    (SMOL, "No tools needed: 4.", "No tools needed: 4.", []),
    (QWEN, '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>',
     "", [("add", {"a": 2, "b": 3})]),
    (QWEN, ('Two calls:\n<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n'
            '</tool_call>\n<tool_call>\n{"name": "add", "arguments": "{\\"a\\": 4, \\"b\\": 5}"}'
            '\n</tool_call>'),
     "Two calls:", [("add", {"a": 2, "b": 3}), ("add", {"a": 4, "b": 5})]),
    (QWEN, '<tool_call>\n{"name": "add", "arguments": {"a": 2}\n</tool_call> and text',
     '<tool_call>\n{"name": "add", "arguments": {"a": 2}\n</tool_call> and text', []),
    (QWEN, ('<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>\n'
            '<tool_call>\n{"name": broken}\n</tool_call>'),
     '<tool_call>\n{"name": broken}\n</tool_call>', [("add", {"a": 2, "b": 3})]),
    (LLAMA, '{"name": "add", "parameters": {"a": 2, "b": 3}}', "", [("add", {"a": 2, "b": 3})]),
    (LLAMA, ('<|python_tag|>{"name": "add", "parameters": {"a": 2, "b": 3}}; '
             '{"name": "get_weather", "parameters": {"city": "Rome", "unit": "celsius"}}'),
     "", [("add", {"a": 2, "b": 3}), ("get_weather", {"city": "Rome", "unit": "celsius"})]),
    (LLAMA, 'Sure.<|python_tag|>{"name": "add", "arguments": {"a": 0, "b": 1}}',
     "Sure.", [("add", {"a": 0, "b": 1})]),
    (LLAMA, '{"name": "add", "parameters": {"a": 2, "b": ',
     '{"name": "add", "parameters": {"a": 2, "b": ', []),
    (LLAMA, '{"name": "add", "parameters": {"a": 2, "b": 3}} and then some text',
     '{"name": "add", "parameters": {"a": 2, "b": 3}} and then some text', []),
    (LLAMA, 'The answer is {"a": 1}', 'The answer is {"a": 1}', []),
]


@pytest.mark.parametrize("parser,output,content,calls", PARSE_CASES,
                         ids=[f"{c[0].name}-{i}" for i, c in enumerate(PARSE_CASES)])
def test_parser_on_hand_written_output(parser, output, content, calls):
    result = parser.parse(output)
    assert result.content == content
    assert _calls(result) == calls
    assert all(re.fullmatch(r"call_[0-9a-f]{24}", c.id) for c in result.calls)
    assert len({c.id for c in result.calls}) == len(result.calls)


@pytest.mark.parametrize("name", ["smollm2", "qwen25", "llama3"])
def test_render_then_parse_round_trips(name):
    parser = parser_class(name)(SCHEMAS)
    result = parser.parse(parser.render([PARIS, SUM]))
    assert _calls(result) == [(PARIS["name"], PARIS["arguments"]), (SUM["name"], SUM["arguments"])]
    assert result.content == ""


def test_parser_names_and_defaults():
    assert parser_class("qwen") is Qwen25Parser and parser_class("llama3") is Llama3Parser
    with pytest.raises(ValueError, match="smollm2"):
        parser_class("nope")
    assert default_parser_name("/x/SmolLM2-135M-Instruct.Q4_1.gguf") == "smollm2"
    assert default_parser_name("Qwen/Qwen2.5-7B-Instruct") == "qwen25"
    assert default_parser_name("meta-llama/Llama-3.1-8B-Instruct") == "llama3"


# ---- grammars that force calls ----------------------------------------------------------------

def _matcher(text):
    import xgrammar as xgr
    compiler = xgr.GrammarCompiler(xgr.TokenizerInfo(["a", "b"]), cache_enabled=False)
    return xgr.GrammarMatcher(compiler.compile_structural_tag(text))


def _accepts(text, output):
    m = _matcher(text)
    return m.accept_string(output) and m.is_completed()


@pytest.mark.parametrize("name", ["smollm2", "qwen25", "llama3"])
def test_required_grammar_accepts_calls_and_nothing_else(name):
    parser = parser_class(name)(SCHEMAS)
    kind, text = tool_call_constraint(parser, SCHEMAS, single=False, backend="xgrammar")
    assert kind == "structural_tag"
    assert _accepts(text, parser.render([PARIS])) and _accepts(text, parser.render([PARIS, SUM]))
    bad_unit = dict(PARIS, arguments={"city": "Paris", "unit": "kelvin"})
    for wrong in ("Sure! " + parser.render([PARIS]), parser.render([bad_unit]),
                  parser.render([{"name": "other", "arguments": {}}]),
                  parser.render([SUM]).replace(": 3", ": 1000"), ""):
        assert not _accepts(text, wrong), wrong
    _, single = tool_call_constraint(parser, {"add": ADD}, single=True, backend="xgrammar")
    assert _accepts(single, parser.render([SUM]))
    assert not _accepts(single, parser.render([SUM, SUM]))
    assert not _accepts(single, parser.render([PARIS]))


def test_required_grammar_is_compact_json():
    """The arguments are spelled like json.dumps: no free whitespace for a model to loop on."""
    _, text = tool_call_constraint(SMOL, SCHEMAS, single=True, backend="xgrammar")
    assert not _accepts(text, SMOL.render([SUM]).replace('"a": 2', '"a":  2'))


@pytest.mark.parametrize("name", ["smollm2", "qwen25", "llama3"])
def test_outlines_regex_matches_calls(name):
    parser = parser_class(name)(SCHEMAS)
    kind, regex = tool_call_constraint(parser, SCHEMAS, single=False, backend="outlines")
    assert kind == "regex"

    def compact(call):  # outlines-core's JSON has no spaces inside the arguments
        args = json.dumps(call["arguments"], separators=(",", ":"))
        return parser.render([dict(call, arguments={})]).replace("{}", args)
    assert re.fullmatch(regex, compact(PARIS)) and re.fullmatch(regex, compact(SUM))
    assert not re.fullmatch(regex, compact(dict(SUM, arguments={"a": 2, "b": 1000})))
    with pytest.raises(ValueError, match="grammar-backend"):
        tool_call_constraint(parser, SCHEMAS, single=False, backend="none")


# ---- streaming --------------------------------------------------------------------------------

def _stream(parser, output, step=3):
    stream, content, calls = ToolStream(parser), [], []
    for end in range(step, len(output) + step, step):
        text, new = stream.update(output[:end], finished=end >= len(output))
        content.append(text)
        calls.append(new)
    return content, calls


@pytest.mark.parametrize("parser,output,content,expected", PARSE_CASES,
                         ids=[f"{c[0].name}-{i}" for i, c in enumerate(PARSE_CASES)])
def test_stream_gives_the_same_calls_as_parse(parser, output, content, expected):
    pieces, calls = _stream(parser, output)
    flat = [(c.name, json.loads(c.arguments)) for step in calls for c in step]
    assert flat == expected
    assert "".join(pieces).strip() == content.strip()


def test_stream_holds_back_a_partial_marker_and_sends_calls_when_they_close():
    stream = ToolStream(SMOL)
    assert stream.update("Hi <tool_c", False) == ("Hi ", [])
    assert stream.update("Hi <tool_cal", False) == ("", [])
    text = 'Hi <tool_call>[{"name": "add", "arguments": {"a": 2, "b": 3}}]</tool_call>'
    content, calls = stream.update(text, False)  # closed: sent before the output ends
    assert content == "" and [c.name for c in calls] == ["add"]
    assert stream.call_deltas(calls)[0]["index"] == 0
    assert stream.update(text + " done", True) == ("done", [])
    plain = ToolStream(SMOL)
    assert plain.update("a <", False) == ("a ", [])
    assert plain.update("a < b", False) == ("< b", [])


# ---- prompt -----------------------------------------------------------------------------------

def _ignoring_render(messages, tools=None):
    return "|".join(f"{m['role']}:{m['content']}" for m in messages)


def test_fallback_prompt_describes_tools_in_the_parser_format():
    messages = [{"role": "user", "content": "weather?"}]
    text = render_with_tools(_ignoring_render, messages, TOOLS, SMOL)
    assert text.startswith("system:") and text.endswith("|user:weather?")
    assert '"name": "get_weather"' in text and '"maxLength": 16' in text
    assert '<tool_call>[{"name": "<function name>", "arguments": {' in text
    with_system = render_with_tools(_ignoring_render, [{"role": "system", "content": "Be brief."},
                                                       *messages], TOOLS, QWEN)
    assert with_system.startswith("system:Be brief.\n\n") and "<tool_call>\n{" in with_system


def test_native_template_gets_the_tools_argument():
    def native(messages, tools=None):
        return _ignoring_render(messages) + (f"|tools:{len(tools)}" if tools else "")
    text = render_with_tools(native, [{"role": "user", "content": "hi"}], TOOLS, SMOL)
    assert text == "user:hi|tools:2"


def test_past_calls_become_text_in_the_parser_format():
    msg = {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}}]}
    out = calls_as_text(msg, QWEN)
    assert "tool_calls" not in out
    assert _calls(QWEN.parse(out["content"])) == [("add", {"a": 2, "b": 3})]


# ---- live server ------------------------------------------------------------------------------

ASK = [{"role": "user", "content": "What is the weather in Paris, and what is 2 + 3?"}]


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=300)


def _chat(client, model_name, **kw):
    kw.setdefault("max_tokens", 64)
    return client.chat.completions.create(model=model_name, messages=kw.pop("messages", ASK),
                                          temperature=1, **kw)


def _check_call(call):
    assert call.type == "function" and call.id.startswith("call_")
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, SCHEMAS[call.function.name])
    return call.function.name, args


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_required_always_gives_valid_calls(client, model_name, seed):
    res = _chat(client, model_name, tools=TOOLS, tool_choice="required", seed=seed,
                parallel_tool_calls=False)
    choice = res.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    assert choice.message.content is None and len(choice.message.tool_calls) == 1
    _check_call(choice.message.tool_calls[0])


def test_required_with_parallel_calls_follows_the_format(client, model_name):
    res = _chat(client, model_name, tools=TOOLS, tool_choice="required", seed=5, max_tokens=96)
    choice = res.choices[0]
    if choice.finish_reason == "length":  # the model kept adding calls: still the format
        assert choice.message.content.startswith('<tool_call>[{"name": "')
        return
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    for call in choice.message.tool_calls:
        _check_call(call)


@pytest.mark.parametrize("seed", [1, 2])
def test_named_function_is_called_with_valid_arguments(client, model_name, seed):
    res = _chat(client, model_name, tools=TOOLS, seed=seed,
                tool_choice={"type": "function", "function": {"name": "add"}})
    choice = res.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert [_check_call(c)[0] for c in choice.message.tool_calls] == ["add"]


def test_stream_sends_the_same_calls(client, model_name):
    kw = {"tools": TOOLS, "seed": 4,
          "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}
    full = _chat(client, model_name, **kw).choices[0].message.tool_calls
    chunks = [c for c in _chat(client, model_name, stream=True, **kw) if c.choices]
    deltas = [d for c in chunks for d in c.choices[0].delta.tool_calls or []]
    assert [(d.index, d.function.name, d.function.arguments) for d in deltas] == [
        (0, c.function.name, c.function.arguments) for c in full]
    assert all(d.id.startswith("call_") and d.type == "function" for d in deltas)
    assert not "".join(c.choices[0].delta.content or "" for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_auto_parses_calls_out_of_the_output(client, model_name):
    """The regex extra makes the model write a call; "auto" must read it out."""
    call = SMOL.render([PARIS])
    for stream in (False, True):
        res = _chat(client, model_name, tools=TOOLS, seed=1, stream=stream,
                    extra_body={"regex": re.escape("Checking. " + call)})
        if stream:
            chunks = [c for c in res if c.choices]
            content = "".join(c.choices[0].delta.content or "" for c in chunks)
            calls = [d for c in chunks for d in c.choices[0].delta.tool_calls or []]
            reason = chunks[-1].choices[0].finish_reason
        else:
            content, calls = res.choices[0].message.content, res.choices[0].message.tool_calls
            reason = res.choices[0].finish_reason
        assert content.strip() == "Checking." and reason == "tool_calls"
        assert [_check_call(c) for c in calls] == [(PARIS["name"], PARIS["arguments"])]


def test_none_ignores_tools_and_auto_puts_them_in_the_prompt(client, model_name):
    plain = _chat(client, model_name, seed=1, max_tokens=4)
    none = _chat(client, model_name, tools=TOOLS, tool_choice="none", seed=1, max_tokens=4)
    auto = _chat(client, model_name, tools=TOOLS, seed=1, max_tokens=1)
    assert none.choices[0].message.content == plain.choices[0].message.content
    assert none.choices[0].message.tool_calls is None
    assert none.usage.prompt_tokens == plain.usage.prompt_tokens
    assert auto.usage.prompt_tokens > plain.usage.prompt_tokens + 50  # the tools section


def test_history_with_tool_calls_and_results(client, model_name):
    past = {"id": "call_0", "type": "function",
            "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}}
    messages = [*ASK, {"role": "assistant", "content": None, "tool_calls": [past]},
                {"role": "tool", "tool_call_id": "call_0", "content": "5"}]
    res = _chat(client, model_name, messages=messages, tools=TOOLS, seed=1, max_tokens=2)
    short = _chat(client, model_name, messages=messages[:1], tools=TOOLS, seed=1, max_tokens=2)
    assert res.usage.prompt_tokens > short.usage.prompt_tokens + 20


BAD_TOOL_REQUESTS = [
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice", "nope"),
    ({"tools": {"type": "function"}}, "tools", "list"),
    ({"tool_choice": "required"}, "tool_choice", "tools"),
    ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice", "tool_choice"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"x": {"type": "strin"}}}}}]},
     "tools.0.function.parameters", "schema"),
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]},
     "tools.0.function.name", "name"),
    ({"tools": TOOLS + TOOLS[:1]}, "tools", "unique"),
    ({"tools": TOOLS, "tool_choice": "required", "response_format": {"type": "json_object"}},
     "tool_choice", "response_format"),
]


@pytest.mark.parametrize("extra,param,word", BAD_TOOL_REQUESTS,
                         ids=[f"bad{i}" for i in range(len(BAD_TOOL_REQUESTS))])
def test_bad_tool_requests_are_400_quickly(server, model_name, extra, param, word):
    body = {"model": model_name, "messages": ASK, "max_tokens": 4, **extra}
    start = time.perf_counter()
    res = requests.post(server.url + "/v1/chat/completions", json=body, timeout=60)
    assert time.perf_counter() - start < 5.0  # compiling nothing; CI cores are shared
    assert res.status_code == 400, res.text
    err = res.json()["error"]
    assert err["param"] == param and word in err["message"], err


def test_server_answers_after_bad_tool_requests(client, model_name):
    res = _chat(client, model_name, seed=1, max_tokens=3)
    assert res.choices[0].message.content and res.usage.completion_tokens <= 3
