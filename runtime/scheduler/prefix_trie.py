"""A radix tree over token ids with no KV behind it: the prompts a step is about to compute, so
that admission can tell which waiting requests share a prefix with them (planner.py); also the
optimal hit rate of a benchmark run's requests (sgl/bench_programs/optimal.py)."""
from __future__ import annotations

from sgl.runtime.cache.radix_cache import common_len


class _Node:
    __slots__ = ("key", "children")

    def __init__(self, key: list[int]) -> None:
        self.key = key                          # the token ids this edge adds to its parent's path
        self.children: dict[int, _Node] = {}    # first token of the child's key -> child


class PrefixTrie:
    def __init__(self) -> None:
        self.root = _Node([])
        self.num_tokens = 0  # distinct (prefix) tokens held: the sum of the edges' lengths

    def insert(self, tokens: list[int]) -> None:
        node, pos = self.root, 0
        while pos < len(tokens):
            child = node.children.get(tokens[pos])
            if child is None:
                node.children[tokens[pos]] = _Node(tokens[pos:])
                self.num_tokens += len(tokens) - pos
                return
            n = common_len(child.key, tokens, pos)
            if n < len(child.key):  # split the edge after n tokens
                upper = _Node(child.key[:n])
                child.key = child.key[n:]
                upper.children[child.key[0]] = child
                node.children[tokens[pos]] = child = upper
            node, pos = child, pos + n

    def match_len(self, tokens: list[int]) -> int:
        """How many leading tokens of `tokens` some inserted sequence also starts with."""
        node, pos = self.root, 0
        while pos < len(tokens) and (child := node.children.get(tokens[pos])) is not None:
            n = common_len(child.key, tokens, pos)
            pos += n
            if n < len(child.key):
                break
            node = child
        return pos
