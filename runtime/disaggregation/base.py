"""What prefill and decode schedulers share: rooms (requests whose KV moves between the two
servers, by room key), outputs made outside the step (aborts, transfer results), the timeouts."""
from __future__ import annotations

import time
from typing import Any, Optional

from sgl.runtime.io_struct import TokenOutput
from sgl.runtime.scheduler.contract import Runner
from sgl.runtime.scheduler.scheduler import Scheduler

_IDLE_SLEEP_S = 0.001  # only transfers pending: poll without spinning a core


class DisaggregatedScheduler(Scheduler):
    def __init__(self, server_args: Any, runner: Runner, tokenizer: Any = None,
                 eos_token_ids: Optional[list[int]] = None) -> None:
        super().__init__(server_args, runner, tokenizer, eos_token_ids)
        self.timeout_s = server_args.disaggregation_transfer_timeout
        self.waiting_timeout_s = server_args.disaggregation_waiting_timeout
        self.rooms: dict[str, Any] = {}    # room key -> its state, in arrival order
        self.room_of: dict[str, str] = {}  # rid -> room key
        self.pd_outputs: list[TokenOutput] = []

    @property
    def has_work(self) -> bool:
        return super().has_work or bool(self.rooms) or bool(self.pd_outputs)

    def flush_cache(self) -> bool:
        return not self.rooms and super().flush_cache()

    def check_pool_invariant(self) -> None:
        assert not self.rooms, f"rooms still open: {list(self.rooms)}"
        super().check_pool_invariant()

    def _with_pd_outputs(self, outputs: list[TokenOutput]) -> list[TokenOutput]:
        """The step's outputs and those made outside it; a step with nothing but transfers to
        wait for sleeps a moment, as the loop steps again at once while there is work."""
        outputs = self.pd_outputs + outputs
        self.pd_outputs = []
        if not (outputs or self.running or self.waiting or self.inflight or self.grammar.waiting):
            time.sleep(_IDLE_SLEEP_S)
        return outputs
