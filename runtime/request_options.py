"""Two /generate fields whose meaning depends on server flags: `return_hidden_states` (what the
server lets a request ask for) and `priority` (scheduled or ignored). `RequestPolicy` is those
flags, as the front end needs them; every error is a ValueError naming the field."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Union

HiddenMode = Union[bool, str]  # False, True (every position) or "last"
_RANK = {False: 0, "last": 1, True: 2}
_SERVER_RANK = {None: 0, "last": 1, "full": 2}
PRIORITY_MIN, PRIORITY_MAX = -(1 << 63), (1 << 63) - 1  # SGLang's: a signed 64-bit integer


@dataclass(frozen=True)
class RequestPolicy:
    hidden_states_mode: Optional[str] = None   # the most a request may ask for: "last" | "full"
    enable_priority: bool = False              # --enable-priority-scheduling
    default_priority: Optional[int] = None     # --default-priority-value
    abort_on_priority_when_disabled: bool = False
    low_priority_values_first: bool = False

    @classmethod
    def from_args(cls, args: Any) -> "RequestPolicy":
        return cls(args.hidden_states_mode, args.enable_priority_scheduling,
                   args.default_priority_value, args.abort_on_priority_when_disabled,
                   args.schedule_low_priority_values_first)

    def rank(self, priority: Optional[int]) -> int:
        """Smaller is preferred; no priority ranks below every explicit one."""
        if priority is None:
            return PRIORITY_MAX + 1
        return priority if self.low_priority_values_first else -priority


def parse_hidden_states(obj: dict[str, Any], num_prompts: int, policy: RequestPolicy,
                        disaggregation_mode: str = "null") -> list[HiddenMode]:
    """One mode per prompt: a bool or "last", or a list of those (one per prompt), as SGLang."""
    raw = obj.get("return_hidden_states")
    raw = False if raw is None else raw
    if isinstance(raw, list):
        if len(raw) != num_prompts:
            raise ValueError(f"return_hidden_states has {len(raw)} entries for {num_prompts} prompts")
        modes = [_mode(m) for m in raw]
    else:
        modes = [_mode(raw)] * num_prompts
    wanted = max(_RANK[m] for m in modes)
    allowed = _SERVER_RANK[policy.hidden_states_mode]
    if wanted > allowed:
        if allowed:
            raise ValueError("return_hidden_states: the server returns at most the last position's "
                             "hidden state (--return-hidden-states-mode last); start it with "
                             "--return-hidden-states-mode full to allow return_hidden_states=true")
        raise ValueError("return_hidden_states: the server is not configured to return hidden "
                         "states; start it with --enable-return-hidden-states (or "
                         "--return-hidden-states-mode last|full)")
    if wanted and disaggregation_mode != "null":
        raise ValueError("return_hidden_states: not supported with prefill-decode disaggregation "
                         "(the prompt's hidden states stay on the prefill server)")
    return modes


def _mode(value: Any) -> HiddenMode:
    if isinstance(value, bool) or value == "last":
        return value
    raise ValueError(f"return_hidden_states must be true, false or \"last\" (or a list of those, "
                     f"one per prompt), got {value!r}")


def parse_priority(obj: dict[str, Any], policy: RequestPolicy) -> Optional[int]:
    """The request's priority: an integer (higher first unless the server says otherwise), the
    server's default when priority scheduling is on and none is given, None when unscheduled."""
    value = obj.get("priority")
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
        raise ValueError(f"priority must be of type int, got {value!r}")
    if value is not None and not PRIORITY_MIN <= value <= PRIORITY_MAX:
        raise ValueError(f"priority must be a signed 64-bit integer in [{PRIORITY_MIN}, "
                         f"{PRIORITY_MAX}], got {value}")
    if not policy.enable_priority:
        if value is not None and policy.abort_on_priority_when_disabled:
            raise ValueError("priority: priority scheduling is disabled on this server "
                             "(--abort-on-priority-when-disabled); send the request without a priority")
        return value
    return policy.default_priority if value is None else value
