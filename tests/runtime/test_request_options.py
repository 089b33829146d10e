"""Parsing `priority` and `return_hidden_states` by the server's flags (runtime/request_options.py):
defaults, refusals naming the field, per-prompt modes."""
from __future__ import annotations

import pytest

from sgl.runtime.request import parse_generate
from sgl.runtime.request_options import RequestPolicy

ON = RequestPolicy(hidden_states_mode="full", enable_priority=True, default_priority=7)


def parse(policy: RequestPolicy, disaggregation_mode: str = "null", **fields):
    body = {"input_ids": [[1, 2], [3, 4]], "sampling_params": {"max_new_tokens": 1, "n": 2}, **fields}
    return parse_generate(body, None, 97, 256, disaggregation_mode=disaggregation_mode, policy=policy).reqs


def test_priority_default_only_when_scheduled():
    assert {r.priority for r in parse(ON)} == {7}
    assert {r.priority for r in parse(ON, priority=-3)} == {-3}
    assert {r.priority for r in parse(RequestPolicy(), priority=5)} == {5}  # kept, not scheduled
    assert {r.priority for r in parse(RequestPolicy(enable_priority=True))} == {None}  # ranks last


@pytest.mark.parametrize("policy,fields,message", [
    (RequestPolicy(abort_on_priority_when_disabled=True), {"priority": 1}, "priority: priority scheduling is disabled"),
    (ON, {"priority": True}, "priority must be of type int"),
    (ON, {"priority": 2.5}, "priority must be of type int"),
    (ON, {"priority": -(1 << 63) - 1}, "priority must be a signed 64-bit integer"),
    (RequestPolicy(), {"return_hidden_states": True}, "--enable-return-hidden-states"),
    (RequestPolicy(hidden_states_mode="last"), {"return_hidden_states": [False, True]},
     "--return-hidden-states-mode full"),
    (ON, {"return_hidden_states": [True]}, "return_hidden_states has 1 entries for 2 prompts"),
    (ON, {"return_hidden_states": "first"}, "return_hidden_states must be"),
])
def test_refusals_name_the_field(policy, fields, message):
    with pytest.raises(ValueError, match=message):
        parse(policy, **fields)


def test_hidden_modes_per_prompt_follow_their_n_copies():
    reqs = parse(ON, return_hidden_states=["last", True])
    assert [r.return_hidden_states for r in reqs] == ["last", "last", True, True]
    assert [r.return_hidden_states for r in parse(RequestPolicy(hidden_states_mode="last"),
                                                  return_hidden_states="last")] == ["last"] * 4
    with pytest.raises(ValueError, match="disaggregation"):
        parse(ON, disaggregation_mode="decode", return_hidden_states=True)
