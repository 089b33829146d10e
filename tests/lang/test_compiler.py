"""Tracing and compiling programs into prompt-sharing call graphs (fake backend)."""
from __future__ import annotations

import sgl
from sgl.lang.ir import SglFork, SglGen, SglGetForkItem, SglJoin
from tests.lang.fake_backend import FakeBackend


@sgl.function
def tips(s, topic):
    s += "Here are two tips about " + topic + ".\n"
    forks = s.fork(2)
    forks += lambda i: f"Tip {i + 1}:" + sgl.gen("tip", max_tokens=8)
    forks.join()
    s += "Summary:" + sgl.gen("summary", max_tokens=8)


def test_trace_records_streams_and_dependencies():
    tracer = tips.trace()
    states = tracer.session.states
    assert len(states) == 3  # the program and two branches
    main_kinds = [type(n).__name__ for n in states[0].nodes]
    assert main_kinds == ["SglConstantText", "SglArgument", "SglConstantText", "SglFork", "SglJoin",
                          "SglConstantText", "SglGen"]
    for branch in states[1:]:
        assert isinstance(branch.nodes[0], SglGetForkItem)
        assert isinstance(branch.nodes[0].prev_node, SglFork)
        assert isinstance(branch.nodes[-1], SglGen) and branch.nodes[-1].name == "tip"
    join = states[0].nodes[4]
    assert isinstance(join, SglJoin) and join.sources == [b.nodes[-1] for b in states[1:]]


def test_prefix_tracing_stops_at_first_argument():
    backend = FakeBackend()
    tracer = tips.trace(backend=backend)
    assert tracer.prefix_text == "Here are two tips about "


def test_compiled_graph_streams_and_print(capsys):
    compiled = tips.compile()
    streams = compiled.streams
    assert sorted(streams) == [0, 1, 2]
    assert [repr(n.expr) for n in streams[1]] == ["GetForkItem(0)", "Constant('Tip 1:')", "Gen('tip')"]
    assert [repr(n.expr) for n in streams[2]] == ["GetForkItem(1)", "Constant('Tip 2:')", "Gen('tip')"]
    join_node = next(n for n in streams[0] if isinstance(n.expr, SglJoin))
    assert {s.pid for s in join_node.source_nodes} == {1, 2}
    compiled.print_graph()
    out = capsys.readouterr().out
    assert "stream  1:" in out and "Fork(2)" in out and "Join(gather_variable, 2 branches)" in out


def test_compiled_run_matches_interpreted_run():
    backend = FakeBackend()
    expected = tips.run(topic="tea", backend=backend)
    got = tips.compile(backend=backend).run(topic="tea", backend=backend)
    assert got.text() == expected.text()
    assert got["tip"] == expected["tip"] and got["summary"] == expected["summary"]


def test_compiled_branches_run_concurrently_and_batch():
    backend = FakeBackend(rendezvous=2)  # the two tips must be in flight together
    compiled = tips.compile(backend=backend)
    compiled.run(topic="tea", backend=backend)
    assert backend.max_active == 2
    states = compiled.run_batch([{"topic": "a"}, {"topic": "bb"}], backend=backend)
    assert states[1]["tip"][0].startswith("<")
    assert states[0].text().startswith("Here are two tips about a.")


def test_compiled_run_precaches_constant_start_once():
    preamble = "A long, fixed instruction that every run of the program shares. " * 2

    @sgl.function
    def prog(s, q):
        s += preamble + q + sgl.gen("a")

    backend = FakeBackend()
    compiled = prog.compile(backend=backend)
    compiled.run(q="x", backend=backend)
    compiled.run(q="y", backend=backend)
    assert backend.cached == [preamble]


def test_compile_with_nested_function_and_variable_across_streams():
    @sgl.function
    def expand(s, tip):
        s += "Expand: " + tip + sgl.gen("long")

    @sgl.function
    def prog(s):
        s += "Tip:" + sgl.gen("tip")
        sub = expand(s["tip"])
        s += " => " + sub["long"]

    backend = FakeBackend()
    expected = prog.run(backend=backend)
    compiled = prog.compile(backend=backend)
    assert len(compiled.streams) == 2
    got = compiled.run(backend=backend)
    assert got.text() == expected.text()


def test_compile_roles_and_var_scope():
    @sgl.function
    def chat(s, q):
        s += sgl.system("sys")
        with s.user():
            s += q
        with s.var_scope("ans"):
            s += sgl.assistant(sgl.gen("a"))

    backend = FakeBackend()
    expected = chat.run(q="hi", backend=backend)
    got = chat.compile(backend=backend).run(q="hi", backend=backend)
    assert got.text() == expected.text() and got["ans"] == expected["ans"]
    tracer = chat.trace(backend=backend)
    assert tracer.prefix_text == "<|im_start|>system\nsys<|im_end|>\n<|im_start|>user\n"
