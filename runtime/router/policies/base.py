"""The policy interface: pick one worker for a request, given the healthy workers and the
request's prompt text. One implementation per file, registered by its flag name."""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from sgl.runtime.router.config import RouterArgs
from sgl.runtime.router.worker import Worker

POLICIES: dict[str, type[Policy]] = {}


class Policy(ABC):
    name: ClassVar[str]

    def __init__(self, args: RouterArgs) -> None:
        self.args = args

    @abstractmethod
    def select(self, workers: Sequence[Worker], text: str) -> Worker:
        """Choose one of `workers` (healthy, never empty) for a request whose prompt is `text`
        ("" when it has none). Called on the event loop; must not block."""

    def remove_worker(self, url: str) -> None:
        """The worker left the pool: forget what is known about it."""

    def reset(self) -> None:
        """Every worker's cache was flushed."""

    def maintain(self) -> None:
        """Periodic upkeep (every --eviction-interval-secs)."""

    def view(self) -> dict[str, Any]:
        """What /get_server_info shows of the policy."""
        return {"name": self.name}


def register_policy(name: str) -> Callable[[type[Policy]], type[Policy]]:
    def wrap(cls: type[Policy]) -> type[Policy]:
        cls.name = name
        POLICIES[name] = cls
        return cls
    return wrap


def least_loaded(workers: Sequence[Worker],
                 tiebreak: Callable[[Worker], Any] = lambda w: 0) -> Worker:
    """Fewest in-flight requests; ties by `tiebreak`, then by fewest requests routed so far."""
    return min(workers, key=lambda w: (w.load, tiebreak(w), w.num_requests))
