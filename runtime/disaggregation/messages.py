"""What prefill and decode servers say to each other (control messages over the mailbox; the KV
itself goes over torch.distributed, runtime/disaggregation/transfer.py), and the bootstrap
fields of a request (SGLang's names: bootstrap_host, bootstrap_port, bootstrap_room)."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Optional

BOOTSTRAP_FIELDS = ("bootstrap_host", "bootstrap_port", "bootstrap_room")


@dataclass(frozen=True)
class Bootstrap:
    """Where one sequence's KV comes from: the prefill server's bootstrap address, and the
    room, a key both servers derive alike from the request the router sent to both."""
    host: str
    port: int
    room: str


@dataclass
class PrefillResult:
    """What the prefill computed beyond the KV: the first output token(s) with their logprobs,
    the prompt's logprobs when asked, and how much of the prompt its cache held."""
    output_ids: list[int] = field(default_factory=list)
    output_logprobs: list[Optional[float]] = field(default_factory=list)
    output_top_logprobs: list[Any] = field(default_factory=list)
    input_logprobs: list[Optional[float]] = field(default_factory=list)
    input_top_logprobs: list[Any] = field(default_factory=list)
    cached_tokens: int = 0


# -- decode -> prefill ------------------------------------------------------------------------
@dataclass
class Hello:
    """First message of a link: the prefill pairs its runner with the decode's."""
    link_id: int
    kv_layout: tuple


@dataclass
class Ready:
    """The decode holds pages for the room's prompt and waits for its KV."""
    link_id: int
    room: str
    num_tokens: int


@dataclass
class Cancel:
    """The decode dropped the room (aborted, timed out): the prefill need not send it."""
    link_id: int
    room: str


@dataclass
class Bye:
    """The decode closed the link (a transfer on it failed)."""
    link_id: int
    reason: str


# -- prefill -> decode ------------------------------------------------------------------------
@dataclass
class Sending:
    """The room's KV follows on the link as the next job: the decode queues its receive."""
    link_id: int
    room: str
    num_tokens: int
    result: PrefillResult


@dataclass
class Failed:
    """The prefill could not serve the room (bad request, aborted, no KV room, ...)."""
    link_id: int
    room: str
    message: str


@dataclass
class LinkBroken:
    """The prefill closed the link, or never opened it (it restarted): open a new one."""
    link_id: int
    message: str


def error_text(e: BaseException) -> str:
    """An exception's first line: torch.distributed errors carry C++ frames after it."""
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


def parse_bootstrap(obj: dict[str, Any], num_copies: list[int]) -> Optional[list[Bootstrap]]:
    """The Bootstrap of every sequence of a /generate request (prompt i has num_copies[i]
    sequences: n > 1), or None when the request has no bootstrap fields. bootstrap_room is one
    integer, or a list of one per prompt (a batch); copy k of prompt i gets the key
    "<room_i>:<k>". ValueError names the field at fault."""
    given = [name for name in BOOTSTRAP_FIELDS if obj.get(name) is not None]
    if not given:
        return None
    if len(given) < len(BOOTSTRAP_FIELDS):
        missing = sorted(set(BOOTSTRAP_FIELDS) - set(given))
        raise ValueError(f"{missing[0]} is required with {given[0]} (prefill-decode disaggregation)")
    host, port, room = obj["bootstrap_host"], obj["bootstrap_port"], obj["bootstrap_room"]
    if not isinstance(host, str) or not host:
        raise ValueError("bootstrap_host must be a non-empty string")
    if not _is_int(port) or not 0 < port < 65536:
        raise ValueError("bootstrap_port must be an integer in [1, 65535]")
    rooms = _rooms(room, len(num_copies))
    return [Bootstrap(host, port, f"{r}:{k}") for r, n in zip(rooms, num_copies) for k in range(n)]


def _rooms(room: Any, num_prompts: int) -> list[str]:
    if _is_int(room) and room >= 0:
        return [str(room)] if num_prompts == 1 else [f"{room}.{i}" for i in range(num_prompts)]
    if (isinstance(room, list) and len(room) == num_prompts
            and all(_is_int(r) and r >= 0 for r in room)):
        if len(set(room)) != len(room):
            raise ValueError("bootstrap_room: the rooms of one batch must be distinct")
        return [str(r) for r in room]
    raise ValueError("bootstrap_room must be an integer >= 0, or a list of one per prompt")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_MESSAGES = {cls.__name__: cls for cls in (Hello, Ready, Cancel, Bye, Sending, Failed, LinkBroken)}


def encode(msg: Any) -> bytes:
    """JSON, not pickle: the mailbox listens on the network, and unpickling runs code."""
    return json.dumps({"type": type(msg).__name__, **dataclasses.asdict(msg)}).encode()


def decode(data: bytes) -> Any:
    """A message from `encode`; ValueError for anything else."""
    try:
        fields = json.loads(data)
        cls = _MESSAGES[fields.pop("type")]
        if cls is Sending:
            fields["result"] = PrefillResult(**fields["result"])
        if cls is Hello:
            fields["kv_layout"] = tuple(fields["kv_layout"])
        return cls(**fields)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"not a disaggregation message: {e!r}") from None
