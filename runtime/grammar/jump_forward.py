"""Jump-forward decoding helpers.

When the grammar forces a span (compact JSON keys, fixed literals), the scheduler appends it to
the output without sampling, one extend step instead of one decode step per token:

  1. s = grammar.jump_forward_str()                                 # None: nothing to do
  2. new_ids = retokenize_with_jump(tokenizer, req.output_ids, s)   # None: skip this jump
  3. if grammar.jump_and_retokenize(req.output_ids, new_ids):       # False: keep old ids
         k = common_prefix_len(req.output_ids, new_ids)
         req.output_ids = new_ids   # KV past prompt + k is stale; extend new_ids[k:]

The forced text is re-encoded together with the last few output tokens because the boundary
usually merges (`{"` + `name": ` encodes as `{"`, `name`, `":`, ` `); grammars match bytes, so
any spelling of the same text is accepted.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

_MAX_ALLOWED = 512  # a state with more allowed tokens forces at most a short prefix


def forced_bytes(state: int, allowed_tokens: Callable[[int], list[int]],
                 next_state: Callable[[int, int], int | None],
                 is_final: Callable[[int], bool], token_bytes: list[bytes],
                 max_len: int = 4096) -> bytes:
    """The bytes every continuation from `state` of a token-level automaton starts with.

    Every continuation begins with an allowed token, so it begins with the longest common
    prefix P of the allowed tokens' bytes. If P is itself a token we step over it (the automaton
    is a byte DFA, so the state after P is the state after any token spelling P) and go on;
    otherwise the allowed tokens diverge right after P and the forced text ends there.
    """
    out = bytearray()
    while len(out) < max_len and not is_final(state):
        allowed = allowed_tokens(state)
        if len(allowed) > _MAX_ALLOWED:
            break
        strings = [token_bytes[t] for t in allowed]
        prefix = os.path.commonprefix(strings)
        if not prefix:
            break
        out += prefix
        exact = next((t for t, s in zip(allowed, strings) if s == prefix), None)
        state = next_state(state, exact) if exact is not None else None
        if state is None:
            break
    return bytes(out)


def utf8_prefix(data: bytes) -> str:
    """The longest prefix of data that is whole UTF-8 characters, decoded."""
    for cut in range(min(4, len(data) + 1)):
        try:
            return data[:len(data) - cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
    return ""


def _decode(tokenizer: Any, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def _encode(tokenizer: Any, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def retokenize_with_jump(tokenizer: Any, output_ids: list[int], jump_str: str,
                         window: int = 8) -> list[int] | None:
    """Output ids spelling decode(output_ids) + jump_str: all but the last `window` tokens
    are kept, the tail (widened past a split UTF-8 character) is re-encoded with jump_str.
    Falls back to appending encode(jump_str); None if no spelling round-trips exactly."""
    n = len(output_ids)
    k = min(window, n)
    while k < n and "\ufffd" in _decode(tokenizer, output_ids[n - k:n - k + 1]):
        k += 1  # do not start the tail inside a multi-byte character
    tail = _decode(tokenizer, output_ids[n - k:])
    if "\ufffd" not in tail:
        new_tail = _encode(tokenizer, tail + jump_str)
        if _decode(tokenizer, new_tail) == tail + jump_str:
            return output_ids[:n - k] + new_tail
    jump_ids = _encode(tokenizer, jump_str)
    if jump_ids and _decode(tokenizer, jump_ids) == jump_str:
        return output_ids + jump_ids
    return None
