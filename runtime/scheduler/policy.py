"""Orders the waiting queue before admission (`--schedule-policy`)."""
from __future__ import annotations

import random
from collections import defaultdict
from typing import Any, Callable, Optional

from sgl.runtime.scheduler.priority import PriorityOrder, order_by_priority
from sgl.runtime.scheduler.req import Req

# Past this queue length, prefix matching every waiting request costs more than it saves.
_LPM_MAX_QUEUE = 128


def order_waiting(policy: str, waiting: list[Req], match: Callable[[Req], tuple[Any, Any]],
                  rng: random.Random, priority: Optional[PriorityOrder] = None) -> list[Req]:
    if priority is not None:  # --enable-priority-scheduling (with fcfs only, as in SGLang)
        return order_by_priority(priority, waiting)
    if policy == "fcfs" or (policy in ("lpm", "dfs-weight") and len(waiting) > _LPM_MAX_QUEUE):
        return sorted(waiting, key=lambda r: r.arrival)
    if policy == "random":
        out = list(waiting)
        rng.shuffle(out)
        return out
    matches = {id(r): match(r) for r in waiting}
    if policy == "lpm":
        return sorted(waiting, key=lambda r: (-int(matches[id(r)][0].numel()), r.arrival))
    return _dfs_weight(waiting, {id(r): matches[id(r)][1] for r in waiting})


def _dfs_weight(waiting: list[Req], nodes: dict[int, Any]) -> list[Req]:
    """Visit the radix tree depth first, heaviest subtree (most waiting requests) first, so
    requests sharing a prefix are admitted together."""
    at_node: dict[int, list[Req]] = defaultdict(list)
    weight: dict[int, int] = defaultdict(int)
    by_id: dict[int, Any] = {}
    root = None
    for r in sorted(waiting, key=lambda r: r.arrival):
        node = nodes[id(r)]
        at_node[id(node)].append(r)
        while node is not None:
            weight[id(node)] += 1
            by_id[id(node)] = node
            root, node = node, node.parent
    out: list[Req] = list(at_node.pop(id(None), []))
    if root is None:
        return out

    def visit(node: Any) -> None:
        out.extend(at_node.get(id(node), []))
        kids = [c for c in node.children.values() if weight.get(id(c), 0) > 0]
        for child in sorted(kids, key=lambda c: -weight[id(c)]):
            visit(child)

    visit(root)
    return out
