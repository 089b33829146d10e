"""--disaggregation-mode prefill: a request that carries a bootstrap room runs its prompt here
and samples its first token (max_new_tokens is cut to 1); its KV is then held until the decode
server that waits for the room says Ready, sent (Sending, then the KV over the link), and
released into this server's radix tree, so later prompts with the same prefix reuse it. The
request's final output is held until the transfer ends, so the router (and a client that closes
the connection, which aborts) sees the whole exchange. Requests without a room are served in
full, as by a colocated server."""
from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any, Optional

from sgl.runtime.disaggregation.base import DisaggregatedScheduler
from sgl.runtime.disaggregation.bootstrap import BootstrapServer
from sgl.runtime.disaggregation.messages import (
    Bye,
    Cancel,
    Failed,
    Hello,
    LinkBroken,
    PrefillResult,
    Ready,
    Sending,
)
from sgl.runtime.io_struct import TokenizedGenerateReq, TokenOutput
from sgl.runtime.scheduler.contract import KVJob, KVLinkSpec, Runner
from sgl.runtime.scheduler.req import Req, ReqState


@dataclass
class PrefillRoom:
    room: str
    rid: str
    req: Optional[Req] = None              # set when its prompt ran: it holds the prompt's KV
    output: Optional[TokenOutput] = None   # its final output, sent when the transfer ends
    link_id: Optional[int] = None          # the link the decode waits on (its Ready)
    num_tokens: int = 0                    # tokens the decode allocated
    is_sending: bool = False
    deadline: float = math.inf             # fail when no decode took it by then


class PrefillScheduler(DisaggregatedScheduler):
    def __init__(self, server_args: Any, runner: Runner, tokenizer: Any = None,
                 eos_token_ids: Optional[list[int]] = None) -> None:
        super().__init__(server_args, runner, tokenizer, eos_token_ids)
        self.bootstrap = BootstrapServer(server_args.disaggregation_bootstrap_port, self.timeout_s)
        self.rooms: dict[str, PrefillRoom] = {}
        self.early: dict[str, tuple[Ready, float]] = {}  # Ready before its request
        self.gone: dict[str, tuple[str, float]] = {}     # failed rooms: message, when
        self.links: set[int] = set()

    # -- requests ----------------------------------------------------------------------------
    def add_request(self, msg: TokenizedGenerateReq) -> None:
        boot = msg.bootstrap
        if boot is None:
            return super().add_request(msg)
        if boot.room in self.rooms or boot.room in self.gone:  # in use, or cancelled already
            message = self.gone.pop(boot.room, (f"bootstrap_room {boot.room} is already in use",))[0]
            self.pd_outputs.append(_abort(msg.rid, len(msg.input_ids), message))
            return
        params = copy.copy(msg.sampling_params)
        params.max_new_tokens = min(params.max_new_tokens, 1)  # the decode server does the rest
        room = self.rooms[boot.room] = PrefillRoom(boot.room, msg.rid)
        self.room_of[msg.rid] = boot.room
        early = self.early.pop(boot.room, None)
        if early is not None:
            room.link_id, room.num_tokens = early[0].link_id, early[0].num_tokens
        super().add_request(dataclasses.replace(msg, sampling_params=params))

    def finish(self, req: Req) -> None:
        room = self._room(req.rid)
        if room is None or req.finished_reason.get("type") == "abort":
            return super().finish(req)
        # Keep the prompt's KV (and the tree nodes it locks) until the decode has it.
        if self.spec is not None:
            self.spec.release(req)
        self.running.remove(req)
        req.state = ReqState.FINISHED
        room.req, room.deadline = req, time.monotonic() + self.waiting_timeout_s

    def abort(self, rid: str) -> list[TokenOutput]:
        outputs = super().abort(rid)  # requests still queued or running
        for out in outputs:
            room = self._room(out.rid)
            if room is not None:
                self._forget(room, out.finished_reason["message"], notify=True)
        for room in [r for r in self.rooms.values() if rid in ("", r.rid)]:
            if room.req is not None and not room.is_sending:  # a sending room ends with its job
                outputs.append(self._fail(room, "aborted by request"))
        return outputs

    @property
    def has_work(self) -> bool:
        return super().has_work or self.bootstrap.has_messages()

    def close(self) -> None:
        """Close the links, the mailbox and the bootstrap store (a process that exits need not)."""
        for link_id in list(self.links):
            self.runner.close_kv_link(link_id)
        self.links.clear()
        self.bootstrap.close()

    # -- the step ----------------------------------------------------------------------------
    def _step(self) -> list[TokenOutput]:
        outputs = self._hold(super()._step())
        self._handle_messages()
        self._start_sends()
        self._finish_transfers()
        self._expire()
        return self._with_pd_outputs(outputs)

    def _hold(self, outputs: list[TokenOutput]) -> list[TokenOutput]:
        """A room's final output waits for its transfer; a failed room tells its decode."""
        kept = []
        for out in outputs:
            room = self._room(out.rid)
            if room is not None and out.finished_reason is not None:
                if room.req is not None and out.finished_reason.get("type") != "abort":
                    room.output = out
                    continue
                self._forget(room, out.finished_reason.get("message", "failed"), notify=True)
            kept.append(out)
        return kept

    def _handle_messages(self) -> None:
        handlers = {Hello: self._on_hello, Ready: self._on_ready, Cancel: self._on_cancel,
                    Bye: self._on_bye}
        for msg in self.bootstrap.poll():
            if not isinstance(msg, Hello) and msg.link_id not in self.links:
                self.bootstrap.send(LinkBroken(msg.link_id, "unknown link (did the prefill "
                                               "server restart?)"))
                self.bootstrap.forget(msg.link_id)
            elif type(msg) in handlers:
                handlers[type(msg)](msg)

    def _on_hello(self, msg: Hello) -> None:
        mine = (*self.info.kv_layout, self.info.kv_backend)
        if tuple(msg.kv_layout) != mine:
            self.bootstrap.send(LinkBroken(msg.link_id, f"KV layouts differ: prefill {mine}, decode "
                                           f"{tuple(msg.kv_layout)} (the same model, dtype and "
                                           "--disaggregation-transfer-backend on both)"))
            self.bootstrap.forget(msg.link_id)
            return
        self.links.add(msg.link_id)
        self.runner.open_kv_link(KVLinkSpec(msg.link_id, "127.0.0.1", self.bootstrap.port, 0,
                                            self.info.kv_backend, self.timeout_s, self.timeout_s))

    def _on_ready(self, msg: Ready) -> None:
        room = self.rooms.get(msg.room)
        if room is None:
            if msg.room in self.gone:
                self.bootstrap.send(Failed(msg.link_id, msg.room, self.gone[msg.room][0]))
            else:  # the router sent the request to both; the decode's Ready came first
                self.early[msg.room] = (msg, time.monotonic())
        elif room.is_sending:  # the decode moved the room to a new link: the old one is closed
            self.bootstrap.send(Failed(msg.link_id, msg.room, "its KV was already on the way "
                                       "over a link the decode server closed"))
        else:
            room.link_id, room.num_tokens = msg.link_id, msg.num_tokens

    def _on_cancel(self, msg: Cancel) -> None:
        self.early.pop(msg.room, None)
        room = self.rooms.get(msg.room)
        if room is None:  # its request has not come yet: refuse it when it does
            self.gone[msg.room] = ("cancelled by the decode server", time.monotonic())
            return
        if room.is_sending or room.link_id != msg.link_id:
            return
        reason = "cancelled by the decode server"
        if room.req is None:  # still queued or computing here
            self.pd_outputs += super().abort(room.rid)
            self._forget(room, reason, notify=False)
        else:
            self.pd_outputs.append(self._fail(room, reason, notify=False))

    def _on_bye(self, msg: Bye) -> None:
        self._close_link(msg.link_id)

    def _close_link(self, link_id: int) -> None:
        """Rooms waiting on the link wait for a new Ready; a room being sent fails with its job."""
        self.links.discard(link_id)
        self.runner.close_kv_link(link_id)
        self.bootstrap.forget(link_id)
        for room in self.rooms.values():
            if room.link_id == link_id and not room.is_sending:
                room.link_id = None

    def _start_sends(self) -> None:
        for room in list(self.rooms.values()):
            if room.req is None or room.link_id is None or room.is_sending:
                continue
            req, num_tokens = room.req, room.req.prompt_len
            if room.num_tokens != num_tokens:
                self.pd_outputs.append(self._fail(room, f"the decode server expects {room.num_tokens} "
                                                  f"prompt tokens, the prompt has {num_tokens}"))
                continue
            self.bootstrap.send(Sending(room.link_id, room.room, num_tokens, _result(req)))
            self.runner.submit_kv(KVJob(room.link_id, room.room, True, num_tokens,
                                        req.kv_indices[:num_tokens]))
            room.is_sending = True

    def _finish_transfers(self) -> None:
        for res in self.runner.poll_kv():
            if res.error is not None and res.link_id in self.links:
                self.bootstrap.send(LinkBroken(res.link_id, res.error))
                self._close_link(res.link_id)
            room = self.rooms.get(res.job_id)
            if room is None or not room.is_sending or room.link_id != res.link_id:
                continue
            self.kv.release(room.req)  # the prompt's KV joins the radix tree
            room.req = None
            out = room.output
            if res.error is not None:
                out.finished_reason = {"type": "abort", "message": f"KV transfer failed: {res.error}"}
            self._forget(room, res.error, notify=False)
            self.pd_outputs.append(out)

    def _expire(self) -> None:
        now = time.monotonic()
        for room in list(self.rooms.values()):
            if room.req is not None and not room.is_sending and now > room.deadline:
                self.pd_outputs.append(self._fail(
                    room, f"no decode server took its KV cache in {self.waiting_timeout_s:.0f} s"))
        for table in (self.early, self.gone):
            for key in [k for k, v in table.items() if now - v[1] > self.waiting_timeout_s]:
                del table[key]

    # -- rooms -------------------------------------------------------------------------------
    def _room(self, rid: str) -> Optional[PrefillRoom]:
        name = self.room_of.get(rid)
        return None if name is None else self.rooms.get(name)

    def _fail(self, room: PrefillRoom, message: str, notify: bool = True) -> TokenOutput:
        """Release a held room's KV and end its request with `message`."""
        req, out = room.req, room.output
        self.kv.release(req)  # the prompt's KV is valid: it stays cached
        room.req = None
        self._forget(room, message, notify)
        if out is None:
            out = _abort(room.rid, req.prompt_len, message)
        out.finished_reason = {"type": "abort", "message": message}
        return out

    def _forget(self, room: PrefillRoom, message: Optional[str], notify: bool) -> None:
        if notify and room.link_id in self.links:
            self.bootstrap.send(Failed(room.link_id, room.room, message or "failed"))
        elif notify and message:  # the decode may still say Ready: answer it then
            self.gone[room.room] = (message, time.monotonic())
        self.rooms.pop(room.room, None)
        self.room_of.pop(room.rid, None)


def _result(req: Req) -> PrefillResult:
    lp = req.input_logprob_from >= 0
    return PrefillResult(list(req.output_ids), list(req.output_logprobs),
                         list(req.output_top_logprobs),
                         list(req.input_logprobs) if lp else [],
                         list(req.input_top_logprobs) if lp else [], req.cached_tokens)


def _abort(rid: str, prompt_len: int, message: str) -> TokenOutput:
    return TokenOutput(rid=rid, new_token_ids=[], prompt_tokens=prompt_len,
                       finished_reason={"type": "abort", "message": message})
