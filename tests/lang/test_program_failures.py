"""No silent wrong answers (issue #26): a request that fails in the runtime is the program's
error, never its result, through gen, select, cache_prefix and fork/join on the in-process
engine (bundled SmolLM2), with faults injected into the rows of chosen requests (those whose
text holds " zebra") or into whole steps (out of memory above a size)."""
from __future__ import annotations

import pytest

import sgl
from tests.runtime.fault_runner import install, uninstall

GREEDY = {"temperature": 0.0}
FAULT = "injected row fault"


@pytest.fixture
def poisoned(engine):
    """Rows of requests whose new tokens hold " zebra" fail."""
    (token,) = engine.tokenizer.encode(" zebra", add_special_tokens=False)
    faulty = install(engine, poison_token=token)
    yield faulty
    uninstall(engine)
    engine.call_in_scheduler(lambda s: s.check_pool_invariant())


@sgl.function
def describe(s, animal):
    s += "Q: Describe a" + animal + " in three words.\nA:" + sgl.gen("answer", max_tokens=5)


@sgl.function
def pick(s, animal):
    s += "Q: Which is larger, a" + animal + " or a mouse?\nA: A"
    s += sgl.select("bigger", choices=[animal, " mouse"])


def test_a_failed_gen_is_an_error_not_a_result(backend, poisoned):
    with pytest.raises(sgl.ProgramError, match=FAULT):
        describe.run(animal=" zebra", backend=backend, **GREEDY)
    state = describe.run_batch([{"animal": " zebra"}], backend=backend, **GREEDY)[0]
    assert FAULT in str(state.error())
    with pytest.raises(sgl.ProgramError):
        state["answer"]
    assert poisoned.num_failed_rows >= 2


def test_a_failed_streamed_gen_ends_the_stream_with_the_error(backend, poisoned):
    state = describe.run(animal=" zebra", backend=backend, stream=True, **GREEDY)
    with pytest.raises(sgl.ProgramError, match=FAULT):
        list(state.text_iter("answer"))
    assert FAULT in str(state.error())


def test_a_failed_select_choice_fails_the_select(backend, poisoned):
    """select scores every choice; one failed choice is no answer, not a choice among the rest."""
    state = pick.run_batch([{"animal": "n elephant"}], backend=backend)[0]  # the " zebra"-free control
    assert state.error() is None and state["bigger"] in ("n elephant", " mouse")
    bad = pick.run_batch([{"animal": " zebra"}], backend=backend)[0]
    assert FAULT in str(bad.error())


def test_a_failed_cache_prefix_and_fork_branch_fail_the_program(backend, poisoned):
    @sgl.function
    def forked(s, shared, branch):
        s += "Notes on" + shared + ".\n"
        forks = s.fork(2)  # caches the shared prefix first (cache_prefix)
        forks += lambda i: f"Point {i} about" + (branch if i else " horses") + ":" + sgl.gen("p", max_tokens=3)
        forks.join()

    with pytest.raises(sgl.ProgramError, match=FAULT):  # the prefix request fails
        forked.run(shared=" zebra", branch=" cats", backend=backend, **GREEDY)
    with pytest.raises(sgl.ProgramError, match=FAULT):  # one branch fails: the join raises
        forked.run(shared=" animals", branch=" zebra", backend=backend, **GREEDY)
    state = forked.run(shared=" animals", branch=" cats", backend=backend, **GREEDY)
    assert state.error() is None and len(state["p"]) == 2


def test_run_batch_marks_just_the_failed_programs(engine, backend, poisoned):
    animals = [" zebra" if i % 4 == 1 else a for i, a in
               enumerate([" cat", " dog", " horse", " cow", " owl", " fox", " bee", " ant"] * 2)]
    states = describe.run_batch([{"animal": a} for a in animals], backend=backend, num_threads=16, **GREEDY)
    uninstall(engine)
    for animal, state in zip(animals, states):
        if animal == " zebra":
            assert FAULT in str(state.error())
        else:  # what the same program gives alone, without faults
            alone = describe.run(animal=animal, backend=backend, **GREEDY)
            assert state.error() is None and state["answer"] == alone["answer"], animal


def test_many_programs_with_steps_out_of_memory_equal_few_at_a_time(engine, backend):
    """Steps over 48 tokens run out of memory: 16 concurrent select programs still give exactly
    the answers of the same programs run two at a time without faults, and none fails."""
    animals = [" cat", " dog", " horse", " cow", " owl", " fox", " bee", " ant"] * 2
    args = [{"animal": a} for a in animals]
    reference = [s["bigger"] for s in pick.run_batch(args, backend=backend, num_threads=2)]
    engine.flush_cache()
    faulty = install(engine, oom_above_tokens=48)
    try:
        states = pick.run_batch(args, backend=backend, num_threads=16)
    finally:
        uninstall(engine)
    assert [s.error() for s in states] == [None] * len(args)
    assert [s["bigger"] for s in states] == reference
    assert faulty.num_oom > 0
