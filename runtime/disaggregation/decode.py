"""--disaggregation-mode decode: a request that carries bootstrap fields does not prefill here.
Its room moves through: queued (waiting for KV room) -> allocated (a table row and slots for
its prompt, through KVManager) -> ready (Ready sent to the prefill server) -> receiving (the
prefill announced the transfer; the runner receives the KV into those slots) -> the request
joins the running batch with the prefill's first token, as if it had just been prefilled here,
and decodes. Every failure ends only its own request with a clear message and frees its pages
(never into the radix tree: they do not hold valid KV); a room's slots are freed only once its
receive job is over. Requests without bootstrap fields are served in full, as colocated."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Optional

import torch
import zmq

from sgl.runtime.disaggregation.base import DisaggregatedScheduler
from sgl.runtime.disaggregation.bootstrap import DecodeLink
from sgl.runtime.disaggregation.messages import (
    Bootstrap,
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
from sgl.runtime.scheduler.contract import KVJob, KVJobResult, KVLinkSpec, Runner
from sgl.runtime.scheduler.output import make_output
from sgl.runtime.scheduler.req import Req, ReqState


@dataclass
class DecodeRoom:
    room: str
    req: Req
    boot: Bootstrap
    stage: str = "queued"                  # queued | allocated | ready | receiving
    link: Optional[DecodeLink] = None
    result: Optional[PrefillResult] = None
    deadline: float = math.inf
    aborted: bool = False                  # ended while its receive runs: free when it is over


class DecodeScheduler(DisaggregatedScheduler):
    def __init__(self, server_args: Any, runner: Runner, tokenizer: Any = None,
                 eos_token_ids: Optional[list[int]] = None) -> None:
        super().__init__(server_args, runner, tokenizer, eos_token_ids)
        self.ctx = zmq.Context()
        self.rooms: dict[str, DecodeRoom] = {}
        self.incoming: dict[str, Bootstrap] = {}  # rid -> bootstrap, until the request is enqueued
        self.links: dict[str, DecodeLink] = {}   # prefill "host:port" -> its current link

    # -- requests ----------------------------------------------------------------------------
    def add_request(self, msg: TokenizedGenerateReq) -> None:
        if msg.bootstrap is not None:
            self.incoming[msg.rid] = msg.bootstrap
        super().add_request(msg)

    def enqueue(self, req: Req) -> None:
        boot = self.incoming.pop(req.rid, None)
        if boot is None:
            return super().enqueue(req)
        if boot.room in self.rooms:
            req.finish({"type": "abort", "message": f"bootstrap_room {boot.room} is already in use"})
            self.pd_outputs.append(make_output(req))
            return
        self.rooms[boot.room] = DecodeRoom(boot.room, req, boot)
        self.room_of[req.rid] = boot.room

    def abort(self, rid: str) -> list[TokenOutput]:
        outputs = super().abort(rid)
        for room in [r for r in self.rooms.values() if rid in ("", r.req.rid) and not r.aborted]:
            outputs.append(self._fail(room, "aborted by request"))
        return outputs

    def close(self) -> None:
        """Close the links and their mailboxes (a process that exits need not)."""
        for link in list(self.links.values()):
            if link.sock is not None:
                self.runner.close_kv_link(link.link_id)
            link.close()
        self.links.clear()
        self.ctx.destroy(linger=0)

    # -- the step ----------------------------------------------------------------------------
    def _step(self) -> list[TokenOutput]:
        self._handle_messages()
        self._finish_transfers()  # joins come first: they decode in this very step
        self._allocate()
        self._send_ready()
        self._expire()
        outputs = self._with_pd_outputs(super()._step())
        for out in outputs:  # a request that ended before it was enqueued (its grammar failed)
            if out.finished_reason is not None:
                self.incoming.pop(out.rid, None)
        return outputs

    def _allocate(self) -> None:
        """Pages for queued rooms, first come first served, while the KV (minus what running
        requests are expected to need, as admission reserves it) and the request limit allow."""
        holding = [r.req for r in self.rooms.values() if r.stage != "queued"]
        reserve = sum(math.ceil(r.remaining_new_tokens() * self.ratio.value)
                      for r in self.running + holding)
        for room in [r for r in self.rooms.values() if r.stage == "queued"]:
            req, num_tokens = room.req, room.req.prompt_len
            if num_tokens > self.allocator.size:
                self.pd_outputs.append(self._fail(room, f"the prompt ({num_tokens} tokens) needs more "
                                                  f"KV cache than this server's pool holds "
                                                  f"({self.allocator.size})"))
                continue
            fits = self.kv.available() - num_tokens >= reserve or not (self.running or holding)
            if len(self.running) + len(holding) >= self.planner.max_running or not fits:
                return
            if not self.kv.admit(req, torch.empty(0, dtype=torch.int64), None):
                return
            slots = self.kv.alloc(num_tokens)
            if slots is None:
                self.kv.discard(req)
                return
            self.kv.extend(req, slots)  # table row and kv_indices: the KV will land there
            room.stage = "allocated"
            holding.append(req)
            reserve += math.ceil(req.remaining_new_tokens() * self.ratio.value)

    def _send_ready(self) -> None:
        failed: set[str] = set()
        for room in [r for r in self.rooms.values() if r.stage == "allocated"]:
            link = self._link(room.boot)
            if link.error is not None:
                self.pd_outputs.append(self._fail(room, link.error))
                failed.add(link.addr)
            elif link.sock is not None:
                link.send(Ready(link.link_id, room.room, room.req.prompt_len))
                room.stage, room.link = "ready", link
                room.deadline = time.monotonic() + self.waiting_timeout_s
        for addr in failed:  # the next request tries pairing again
            del self.links[addr]

    def _link(self, boot: Bootstrap) -> DecodeLink:
        """The current link to the room's prefill: paired in the background, connected here."""
        addr = f"{boot.host}:{boot.port}"
        link = self.links.get(addr)
        if link is None:
            link = self.links[addr] = DecodeLink(boot.host, boot.port, self.timeout_s)
        if link.is_paired and link.error is None and link.sock is None:
            link.connect(self.ctx, Hello(link.link_id, (*self.info.kv_layout, self.info.kv_backend)))
            self.runner.open_kv_link(KVLinkSpec(link.link_id, boot.host, boot.port, 1,
                                                self.info.kv_backend, self.timeout_s, self.timeout_s))
        return link

    def _handle_messages(self) -> None:
        for link in list(self.links.values()):
            for msg in link.poll():
                if isinstance(msg, Sending):
                    self._on_sending(link, msg)
                elif isinstance(msg, Failed):
                    room = self.rooms.get(msg.room)
                    if room is not None and room.link is link and room.stage == "ready":
                        self.pd_outputs.append(self._fail(room, f"the prefill server failed the "
                                                          f"request: {msg.message}", cancel=False))
                elif isinstance(msg, LinkBroken) and msg.link_id == link.link_id:
                    self._close_link(link, f"prefill {link.addr} closed the link: {msg.message}")

    def _on_sending(self, link: DecodeLink, msg: Sending) -> None:
        """Queue the receive in announcement order (a dropped room still receives, into no
        slots: the prefill's jobs and ours must pair up one for one)."""
        room = self.rooms.get(msg.room)
        if room is None or room.link is not link or room.stage != "ready":
            self.runner.submit_kv(KVJob(link.link_id, msg.room, False, msg.num_tokens))
            return
        if msg.num_tokens != room.req.prompt_len:
            self.runner.submit_kv(KVJob(link.link_id, msg.room, False, msg.num_tokens))
            self.pd_outputs.append(self._fail(room, f"the prefill sent {msg.num_tokens} tokens "
                                              f"of KV for a {room.req.prompt_len}-token prompt"))
            return
        self.runner.submit_kv(KVJob(link.link_id, msg.room, False, msg.num_tokens,
                                    room.req.kv_indices))
        room.stage, room.result = "receiving", msg.result

    def _finish_transfers(self) -> None:
        for res in self.runner.poll_kv():
            link = next((k for k in self.links.values() if k.link_id == res.link_id), None)
            if res.error is not None and link is not None:
                link.send(Bye(link.link_id, res.error))
                self._close_link(link, res.error)
            room = self.rooms.get(res.job_id)
            if room is None or room.stage != "receiving" or room.link is None \
                    or room.link.link_id != res.link_id:
                continue
            self._end_receive(room, res)

    def _end_receive(self, room: DecodeRoom, res: KVJobResult) -> None:
        if room.aborted:  # its request already ended; the slots are free to go now
            self._drop(room)
        elif res.error is not None:
            self.pd_outputs.append(self._fail(room, f"receiving the KV cache from prefill "
                                              f"{room.link.addr} failed: {res.error}"))
        else:
            self._join(room)

    def _join(self, room: DecodeRoom) -> None:
        """The request continues as if its prompt had just run here: its first token (from the
        prefill) goes through the grammar and the stop checks, then it decodes."""
        req, res = room.req, room.result
        self.rooms.pop(room.room)
        self.room_of.pop(req.rid)
        req.cached_tokens = res.cached_tokens
        if req.input_logprob_from >= 0:
            req.input_logprobs, req.input_top_logprobs = res.input_logprobs, res.input_top_logprobs
        req.state, req.num_admissions = ReqState.RUNNING, 1
        self.running.append(req)
        for token, lp, top in zip(res.output_ids, res.output_logprobs, res.output_top_logprobs):
            req.append_output(token, lp, top)
            if req.grammar is not None:
                self.grammar.after_token(req, token, self.kv)
            if not req.is_finished:
                self.stop_checker.check(req, token)
        if not res.output_ids:  # max_new_tokens 0: the prompt alone was asked for
            req.finish({"type": "length", "length": 0})
        if req.is_finished:
            self.finish(req)
        self.pd_outputs.append(make_output(req))

    def _close_link(self, link: DecodeLink, reason: str) -> None:
        """Rooms that wait on the link wait again on a new one; rooms receiving on it end with
        their jobs (the runner fails the queued ones)."""
        self.runner.close_kv_link(link.link_id)
        link.close()
        if self.links.get(link.addr) is link:
            del self.links[link.addr]
        for room in self.rooms.values():
            if room.link is link and room.stage == "ready":
                room.stage, room.link = "allocated", None

    def _expire(self) -> None:
        now = time.monotonic()
        for room in [r for r in self.rooms.values() if r.stage == "ready" and now > r.deadline]:
            self.pd_outputs.append(self._fail(room, f"timed out after {self.waiting_timeout_s:.0f} s "
                                              f"waiting for the KV cache from prefill "
                                              f"{room.link.addr}"))

    # -- rooms -------------------------------------------------------------------------------
    def _fail(self, room: DecodeRoom, message: str, cancel: bool = True) -> TokenOutput:
        """End the room's request with `message`; its pages go back now, or once its receive
        job is over."""
        req = room.req
        if cancel and room.stage == "ready":
            room.link.send(Cancel(room.link.link_id, room.room))
        req.finish({"type": "abort", "message": message})
        if room.stage == "receiving":
            room.aborted = True
        else:
            self._drop(room)
        return TokenOutput(rid=req.rid, new_token_ids=[], finished_reason=req.finished_reason,
                           prompt_tokens=req.prompt_len)

    def _drop(self, room: DecodeRoom) -> None:
        self.kv.discard(room.req)
        room.req.state = ReqState.FINISHED
        self.rooms.pop(room.room, None)
        self.room_of.pop(room.req.rid, None)
