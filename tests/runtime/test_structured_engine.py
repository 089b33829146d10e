"""Structured generation through sgl.Engine on the bundled model, sampled at temperature 1 so the
grammar, not the model, keeps the output valid: every schema and regex of the grammar tests,
under both backends; jump-forward on and off."""
from __future__ import annotations

import json
import re

import jsonschema
import pytest

from sgl.runtime.engine import Engine
from tests.runtime.test_grammar import REGEXES, SCHEMAS

PROMPT = "Answer with a value in the required format:"
# An unbounded number is an unbounded digit string: at temperature 1 it need not end within any
# token budget, so it is checked by the mask-level random walks only.
UNBOUNDED = {"num_free"}


@pytest.fixture(scope="module", params=["xgrammar", "outlines"])
def engine(request):
    with Engine(grammar_backend=request.param, random_seed=5) as e:
        yield e
        e.call_in_scheduler(lambda s: s.check_pool_invariant())


def test_every_schema_validates(engine):
    names = sorted(set(SCHEMAS) - UNBOUNDED)
    assert len(names) >= 20
    params = [{"max_new_tokens": 160, "temperature": 1.0, "seed": i, "json_schema": json.dumps(SCHEMAS[n])}
              for i, n in enumerate(names)]
    outs = engine.generate([PROMPT] * len(names), params)
    for name, out in zip(names, outs):
        assert out["meta_info"]["finish_reason"]["type"] == "stop", (name, out)
        jsonschema.validate(json.loads(out["text"]), SCHEMAS[name])


def test_every_regex_fullmatches(engine):
    names = sorted(REGEXES)
    params = [{"max_new_tokens": 64, "temperature": 1.0, "seed": i, "regex": REGEXES[n]}
              for i, n in enumerate(names)]
    outs = engine.generate([PROMPT] * len(names), params)
    for name, out in zip(names, outs):
        assert re.fullmatch(REGEXES[name], out["text"]), (name, out["text"])


def test_grammar_with_n_samples(engine):
    outs = engine.generate(PROMPT, {"max_new_tokens": 16, "temperature": 1.0, "n": 3, "seed": 2,
                                    "regex": REGEXES["choice"]})
    assert len(outs) == 3 and all(re.fullmatch(REGEXES["choice"], o["text"]) for o in outs)


def test_invalid_grammar_is_a_value_error(engine):
    with pytest.raises(ValueError, match="json_schema"):
        engine.generate(PROMPT, {"json_schema": "{not json"})
    with pytest.raises(ValueError, match="regex"):
        engine.generate(PROMPT, {"regex": "(unclosed"})
    assert engine.generate(PROMPT, {"max_new_tokens": 2})["meta_info"]["completion_tokens"] == 2


@pytest.mark.parametrize("backend", ["xgrammar", "outlines"])
def test_jump_forward_saves_forward_passes(backend):
    schema = json.dumps(SCHEMAS["long_keys"])
    passes, texts = {}, {}
    for jf in (False, True):
        with Engine(grammar_backend=backend, disable_jump_forward=not jf) as e:
            before = e.scheduler.stats.num_forward_passes
            out = e.generate(PROMPT, {"max_new_tokens": 96, "temperature": 1.0, "seed": 3, "json_schema": schema})
            passes[jf] = e.scheduler.stats.num_forward_passes - before
            texts[jf] = out
    for out in texts.values():
        jsonschema.validate(json.loads(out["text"]), SCHEMAS["long_keys"])
    assert texts[True]["meta_info"]["jump_forward_tokens"] > 0
    assert passes[True] < passes[False] / 1.5, passes
