"""The detokenizer process: turns each request's new token ids into new text (incrementally,
never half a character) and passes every message on to the HTTP process. Decoding here keeps
that CPU work off both the model loop and the HTTP event loop."""
from __future__ import annotations

import traceback
from multiprocessing.connection import Connection
from typing import Any, Optional

import zmq

from sgl.runtime.detokenizer import IncrementalDetokenizer
from sgl.runtime.io_struct import TokenOutput
from sgl.runtime.server.ipc import (
    DetokParams,
    Endpoints,
    OutputBatch,
    arm_graceful_stop,
    child_signals,
    configure_logging,
    exit_now,
    pull_socket,
    push_socket,
    watch_parent,
)


class Detokenizer:
    """Per-request incremental decoders, created from the params the scheduler forwards and
    dropped when the request finishes."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.params: dict[str, DetokParams] = {}
        self.decoders: dict[str, IncrementalDetokenizer] = {}

    def process(self, batch: OutputBatch) -> OutputBatch:
        self.params.update(batch.detok_params)
        if self.tokenizer is not None:
            for out in batch.outputs:
                out.text_delta = self._decode(out)
        for out in batch.outputs:
            if out.finished_reason is not None:
                self.params.pop(out.rid, None)
                self.decoders.pop(out.rid, None)
        return OutputBatch(batch.outputs)

    def _decode(self, out: TokenOutput) -> str:
        skip_special, spaces_between, no_stop_trim = self.params.get(out.rid, (True, True, False))
        dec = self.decoders.get(out.rid)
        old_text = ""
        if dec is None or out.num_rewritten:
            kept = dec.ids[:len(dec.ids) - out.num_rewritten] if dec is not None else []
            old_text = dec.text if dec is not None else ""
            dec = self.decoders[out.rid] = IncrementalDetokenizer(self.tokenizer, skip_special,
                                                                 spaces_between)
            dec.add(kept)  # jump-forward re-spelled the tail: same text, new ids
        ids = out.new_token_ids
        matched = (out.finished_reason or {}).get("matched")
        if isinstance(matched, int) and ids and ids[-1] == matched and not no_stop_trim:
            ids = ids[:-1]  # the stop token itself is not part of the text
        delta = dec.add(ids)
        if out.finished_reason is not None:
            delta += dec.finish()
        if out.num_rewritten:
            delta = dec.text[len(old_text):] if dec.text.startswith(old_text) else delta
        return delta


def run_detokenizer_process(log_level: str, endpoints: Endpoints, parent_pid: int,
                            conn: Connection) -> None:
    watch_parent(parent_pid, cleanup_dir=endpoints.folder)  # the one child that cleans up
    stop = child_signals()
    configure_logging(log_level, "DETOK")
    try:
        tokenizer = conn.recv()
    except BaseException:
        conn.send({"error": traceback.format_exc()})
        return
    ctx = zmq.Context()
    inbox = pull_socket(ctx, endpoints.to_detokenizer)
    out = push_socket(ctx, endpoints.to_tokenizer)
    detok = Detokenizer(tokenizer)
    conn.send({"ready": {}})
    arm_graceful_stop(stop)
    while not stop.is_set():
        if not inbox.poll(100):
            continue
        msg: Optional[Any] = inbox.recv_pyobj()
        out.send_pyobj(detok.process(msg) if isinstance(msg, OutputBatch) else msg)
    ctx.destroy(linger=0)
    exit_now()
