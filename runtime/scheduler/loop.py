"""Drives a Scheduler: take messages, step while there is work, hand outputs on. Transport
agnostic: the in-process engine passes a queue, the server process a ZMQ socket reader."""
from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future
from typing import Any, Callable

logger = logging.getLogger("sgl.scheduler")


class Call:
    """Run fn(scheduler) on the scheduler's thread and resolve a future with its result."""

    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self.fn, self.future = fn, Future()


def run_scheduler_loop(sched: Any, inbox: "queue.Queue[Any]", emit: Callable[[list], None],
                       stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            msgs = [inbox.get(timeout=0.05)] if not sched.has_work else []
        except queue.Empty:
            continue
        while True:
            try:
                msgs.append(inbox.get_nowait())
            except queue.Empty:
                break
        outputs = []
        for msg in msgs:
            outputs += _handle(sched, msg)
        if sched.has_work:
            try:
                outputs += sched.step()
            except Exception as e:  # a broken step must not leave clients waiting forever
                logger.exception("scheduler step failed")
                outputs += sched.abort_all(f"internal error: {e}")
        if outputs:
            emit(outputs)


def _handle(sched: Any, msg: Any) -> list:
    if isinstance(msg, Call):
        try:
            msg.future.set_result(msg.fn(sched))
        except Exception as e:
            msg.future.set_exception(e)
        return []
    return sched.handle(msg) or []
