"""Prefill-decode disaggregation (`--disaggregation-mode prefill|decode`): a prefill server runs
prompts and sends their KV cache to a decode server, which decodes; `sgl router
--pd-disaggregation` sends each request to one of each and streams the decode's answer back.

    messages.py   what the two servers say to each other; the requests' bootstrap fields
    bootstrap.py  the prefill's bootstrap store and mailbox; the decode's link to a prefill
    transfer.py   the runner's side: KV over torch.distributed point-to-point (NCCL / gloo)
    prefill.py    PrefillScheduler      decode.py   DecodeScheduler
"""
from __future__ import annotations

from typing import Any, Optional


def make_scheduler(server_args: Any, runner: Any, tokenizer: Any = None,
                   eos_token_ids: Optional[list[int]] = None) -> Any:
    """The scheduler of this server's --disaggregation-mode."""
    mode = server_args.disaggregation_mode
    if mode == "prefill":
        from sgl.runtime.disaggregation.prefill import PrefillScheduler as cls
    elif mode == "decode":
        from sgl.runtime.disaggregation.decode import DecodeScheduler as cls
    else:
        from sgl.runtime.scheduler.scheduler import Scheduler as cls
    return cls(server_args, runner, tokenizer, eos_token_ids)
