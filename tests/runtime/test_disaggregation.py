"""Prefill-decode disaggregation at the scheduler level: a PrefillScheduler and a DecodeScheduler
on fake runners in one process, paired over the real bootstrap store, mailbox and gloo links.
The fake model reads each request's whole history back through the decode's table and pool, so
a token whose "KV" did not arrive in the right slot fails the test ("read a slot nothing
wrote") or changes the output."""
from __future__ import annotations

import time
from typing import Any, Optional

import pytest

from sgl.runtime.config import ServerArgs
from sgl.runtime.disaggregation.decode import DecodeScheduler
from sgl.runtime.disaggregation.messages import Bootstrap
from sgl.runtime.disaggregation.prefill import PrefillScheduler
from sgl.runtime.executor.tensor_parallel import free_port
from sgl.runtime.io_struct import AbortReq, TokenizedGenerateReq, TokenOutput
from sgl.runtime.sampling.params import SamplingParams
from sgl.runtime.scheduler.scheduler import Scheduler
from tests.runtime.fake_runner import FakeRunner, reference_generate


class Pair:
    """A prefill and a decode scheduler, stepped in turns by `run`."""

    def __init__(self, waiting_timeout: float = 30.0, transfer_timeout: float = 10.0,
                 decode_tokens: int = 512, prefill_tokens: int = 512) -> None:
        self.port = free_port()
        common = dict(random_seed=1, disaggregation_waiting_timeout=waiting_timeout,
                      disaggregation_transfer_timeout=transfer_timeout,
                      disaggregation_bootstrap_port=self.port)
        self.prefill = PrefillScheduler(ServerArgs(disaggregation_mode="prefill", **common),
                                        FakeRunner(max_total_tokens=prefill_tokens), None, [])
        self.decode = DecodeScheduler(ServerArgs(disaggregation_mode="decode", **common),
                                      FakeRunner(max_total_tokens=decode_tokens), None, [])
        self.outputs: dict[str, dict[str, list[TokenOutput]]] = {"prefill": {}, "decode": {}}

    def submit(self, rid: str, prompt: list[int], max_new: int, room: Optional[str] = None,
               to: tuple[str, ...] = ("prefill", "decode"), **kw: Any) -> None:
        boot = Bootstrap("127.0.0.1", self.port, room or f"room-{rid}")
        for side in to:
            params = SamplingParams(max_new_tokens=max_new, temperature=0)
            self.sched(side).add_request(TokenizedGenerateReq(rid, prompt, params, bootstrap=boot, **kw))

    def sched(self, side: str) -> Scheduler:
        return self.prefill if side == "prefill" else self.decode

    def step(self) -> None:
        for side in ("prefill", "decode"):
            s = self.sched(side)
            if s.has_work:
                for out in s.step():
                    self.outputs[side].setdefault(out.rid, []).append(out)

    def run(self, rids: list[str], timeout_s: float = 30.0) -> dict[str, list[int]]:
        """Step both until the decode finished every rid and both are idle; token ids by rid."""
        deadline = time.monotonic() + timeout_s
        while not self.done(rids) or self.prefill.has_work or self.decode.has_work:
            assert time.monotonic() < deadline, f"not done: {self.prefill.rooms} {self.decode.rooms}"
            self.step()
        return {rid: self.ids(rid) for rid in rids}

    def done(self, rids: list[str]) -> bool:
        return all(self.final("decode", rid) is not None for rid in rids)

    def final(self, side: str, rid: str) -> Optional[TokenOutput]:
        outs = self.outputs[side].get(rid, [])
        return outs[-1] if outs and outs[-1].finished_reason is not None else None

    def ids(self, rid: str) -> list[int]:
        return [t for out in self.outputs["decode"][rid] for t in out.new_token_ids]

    def check_idle(self) -> None:
        for s in (self.prefill, self.decode):
            s.check_pool_invariant()
            s.tree.check_integrity()

    def close(self) -> None:
        self.decode.close()
        self.prefill.close()


@pytest.fixture
def pair() -> Any:
    p = Pair()
    yield p
    p.close()


def test_one_request_decodes_from_the_transferred_kv(pair: Pair) -> None:
    pair.submit("a", [5, 6, 7, 8], 10)
    assert pair.run(["a"])["a"] == reference_generate([5, 6, 7, 8], 10)
    assert pair.final("decode", "a").finished_reason == {"type": "length", "length": 10}
    # the prefill ran the prompt and sampled the first token only; its answer waited for the transfer
    assert [t for o in pair.outputs["prefill"]["a"] for t in o.new_token_ids] == \
        reference_generate([5, 6, 7, 8], 1)
    assert pair.decode.runner.num_steps == 9  # decode steps only: no prompt ran there
    pair.check_idle()


def test_concurrent_requests_match_a_colocated_run(pair: Pair) -> None:
    prompts = [[(7 * i + j) % 97 for j in range(3 + i % 11)] for i in range(24)]
    for i, p in enumerate(prompts):
        pair.submit(str(i), p, 4 + i % 6)
    got = pair.run([str(i) for i in range(24)])
    assert got == {str(i): reference_generate(p, 4 + i % 6) for i, p in enumerate(prompts)}
    pair.check_idle()


def test_prefill_keeps_its_radix_cache(pair: Pair) -> None:
    shared = list(range(1, 41))
    pair.submit("a", shared + [50], 3)
    pair.run(["a"])
    pair.submit("b", shared + [60, 61], 3)
    assert pair.run(["b"])["b"] == reference_generate(shared + [60, 61], 3)
    assert pair.final("decode", "b").cached_tokens >= 40  # counted by the prefill, reported by the decode
    pair.check_idle()


def test_logprobs_and_first_token_stop_as_colocated(pair: Pair) -> None:
    prompt = [3, 1, 4, 1, 5, 9, 2, 6]
    pair.submit("lp", prompt, 5, return_logprob=True, logprob_start_len=2, top_logprobs_num=0)
    first = reference_generate(prompt, 1)[0]
    pair.submit("stop", prompt, 5, room="r2")
    pair.decode.add_request(TokenizedGenerateReq(  # a decode-side stop on the first token
        "s", prompt, SamplingParams(max_new_tokens=5, temperature=0, stop_token_ids=[first]),
        bootstrap=Bootstrap("127.0.0.1", pair.port, "r3")))
    pair.prefill.add_request(TokenizedGenerateReq(
        "s", prompt, SamplingParams(max_new_tokens=5, temperature=0, stop_token_ids=[first]),
        bootstrap=Bootstrap("127.0.0.1", pair.port, "r3")))
    pair.run(["lp", "stop", "s"])
    colocated = Scheduler(ServerArgs(random_seed=1), FakeRunner(), None, [])
    colocated.add_request(TokenizedGenerateReq("lp", prompt, SamplingParams(max_new_tokens=5, temperature=0),
                                               return_logprob=True, logprob_start_len=2))
    want = []
    while colocated.has_work:
        want += colocated.step()
    got = pair.outputs["decode"]["lp"]
    assert got[0].input_logprobs == want[0].input_logprobs and got[0].input_token_ids == want[0].input_token_ids
    assert [lp for o in got for lp in o.output_logprobs] == [lp for o in want for lp in o.output_logprobs]
    assert pair.final("decode", "s").finished_reason == {"type": "stop", "matched": first}
    assert pair.ids("s") == [first]
    pair.check_idle()


def test_abort_on_the_decode_side_frees_both(pair: Pair) -> None:
    pair.submit("a", list(range(1, 30)), 20, to=("decode",))  # the prefill never hears of it
    for _ in range(50):
        pair.step()
    assert pair.decode.rooms["room-a"].stage == "ready"
    assert pair.decode.allocator.available_size() < pair.decode.allocator.size  # pages held
    pair.outputs["decode"]["a"] = pair.decode.handle(AbortReq("a"))
    assert pair.final("decode", "a").finished_reason["type"] == "abort"
    deadline = time.monotonic() + 10
    while "room-a" not in pair.prefill.gone:  # the Cancel crosses the mailbox
        assert time.monotonic() < deadline
        pair.step()
    pair.submit("a", list(range(1, 30)), 20, to=("prefill",))  # now it arrives: it was cancelled
    while pair.prefill.has_work and time.monotonic() < deadline:
        pair.step()
    out = pair.final("prefill", "a")
    assert out is not None and out.finished_reason == {"type": "abort", "message":
                                                       "cancelled by the decode server"}
    assert "room-a" not in pair.prefill.gone  # the refusal used the record up
    pair.check_idle()


def test_decode_times_out_waiting_for_the_prefill() -> None:
    p = Pair(waiting_timeout=0.5)
    try:
        p.submit("a", [1, 2, 3], 5, to=("decode",))
        t0 = time.monotonic()
        p.run(["a"])
        out = p.final("decode", "a")
        assert out.finished_reason["type"] == "abort" and "timed out" in out.finished_reason["message"]
        assert 0.5 <= time.monotonic() - t0 < 10
        p.submit("b", [1, 2, 3], 5)  # the pair still serves
        assert p.run(["b"])["b"] == reference_generate([1, 2, 3], 5)
        p.check_idle()
    finally:
        p.close()


def test_an_unreachable_prefill_fails_its_requests_and_frees_their_pages() -> None:
    p = Pair(transfer_timeout=1.0)
    try:
        nobody = free_port()
        for rid in ("a", "b"):
            p.decode.add_request(TokenizedGenerateReq(
                rid, [1, 2, 3], SamplingParams(max_new_tokens=4, temperature=0),
                bootstrap=Bootstrap("127.0.0.1", nobody, f"r-{rid}")))
        p.run(["a", "b"], timeout_s=20)
        for rid in ("a", "b"):
            reason = p.final("decode", rid).finished_reason
            assert reason["type"] == "abort" and "cannot reach the bootstrap server" in reason["message"]
        p.check_idle()
    finally:
        p.close()


# -- requests and flags -----------------------------------------------------------------------
def test_bootstrap_fields_give_every_sequence_its_room() -> None:
    from sgl.runtime.request import parse_generate
    body = {"input_ids": [[1, 2], [3, 4]], "sampling_params": {"n": 2, "max_new_tokens": 3},
            "bootstrap_host": "10.0.0.1", "bootstrap_port": 8998, "bootstrap_room": [11, 12]}
    reqs = parse_generate(body, None, 97, 256, disaggregation_mode="decode").reqs
    assert [r.bootstrap.room for r in reqs] == ["11:0", "11:1", "12:0", "12:1"]
    assert {(r.bootstrap.host, r.bootstrap.port) for r in reqs} == {("10.0.0.1", 8998)}
    one = dict(body, input_ids=[[1, 2], [3, 4]], bootstrap_room=7)  # one room for a batch
    assert [r.bootstrap.room for r in parse_generate(one, None, 97, 256, disaggregation_mode="prefill").reqs] \
        == ["7.0:0", "7.0:1", "7.1:0", "7.1:1"]
    for bad, field in ((dict(body, bootstrap_port=None), "bootstrap_port"),
                       (dict(body, bootstrap_room=[1, 1]), "bootstrap_room"),
                       (dict(body, bootstrap_room=[1]), "bootstrap_room"),
                       (dict(body, bootstrap_host=""), "bootstrap_host"),
                       (dict(body, bootstrap_port=70000), "bootstrap_port")):
        with pytest.raises(ValueError, match=field):
            parse_generate(bad, None, 97, 256, disaggregation_mode="decode")
    with pytest.raises(ValueError, match="bootstrap_room: this server is not disaggregated"):
        parse_generate(body, None, 97, 256)  # a colocated server refuses them


def test_disaggregation_flags_are_checked() -> None:
    from sgl.runtime.disaggregation.messages import Ready, decode, encode
    for bad, word in ((dict(disaggregation_mode="both"), "disaggregation_mode"),
                      (dict(disaggregation_mode="prefill", tp_size=2), "tp_size"),
                      (dict(disaggregation_mode="decode", speculative_algorithm="EAGLE",
                            speculative_draft_model_path="x"), "NGRAM"),
                      (dict(disaggregation_transfer_timeout=0), "timeout")):
        with pytest.raises(ValueError, match=word):
            ServerArgs(**bad)
    assert ServerArgs().transfer_backend("cuda") == "nccl"
    assert ServerArgs(disaggregation_transfer_backend="gloo").transfer_backend("cuda") == "gloo"
    assert decode(encode(Ready(3, "r:0", 17))) == Ready(3, "r:0", 17)
    with pytest.raises(ValueError, match="not a disaggregation message"):
        decode(b'{"type": "os.system", "link_id": 1}')
