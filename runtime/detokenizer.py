"""Incremental detokenization that never emits half a character, and the stop-string rules
that decide how much of the text a client may see yet."""
from __future__ import annotations

from typing import Any, Optional


# A character is at most 4 bytes, so more unread tokens than this still ending in an incomplete
# sequence are broken bytes (a model emitting lone byte tokens): emit them as U+FFFD rather than
# wait, which would re-decode an ever longer window on every token.
MAX_PENDING = 8


class IncrementalDetokenizer:
    """Decodes a growing id list. Each `add` returns only whole new characters: text is decoded
    over a small window of already-read tokens so that tokenizers which change spacing at a
    token boundary still produce the same text as decoding everything at once."""

    def __init__(self, tokenizer: Any, skip_special_tokens: bool = True,
                 spaces_between_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.kw = {"skip_special_tokens": skip_special_tokens}
        if not spaces_between_special_tokens:
            self.kw["spaces_between_special_tokens"] = False
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0
        self.text = ""

    def add(self, new_ids: list[int]) -> str:
        self.ids.extend(new_ids)
        prefix_text = self._decode(self.ids[self.prefix_offset:self.read_offset])
        new_text = self._decode(self.ids[self.prefix_offset:])
        unread = len(self.ids) - self.read_offset
        if len(new_text) <= len(prefix_text) or (new_text.endswith("\ufffd") and unread < MAX_PENDING):
            return ""  # an incomplete UTF-8 sequence: wait for the next token
        delta = new_text[len(prefix_text):]
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        self.text += delta
        return delta

    def finish(self) -> str:
        """At the end, whatever remains (a dangling partial character included)."""
        full = self._decode(self.ids)
        delta = full[len(self.text):] if full.startswith(self.text) else ""
        self.text += delta
        return delta

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, **self.kw) if ids else ""


def visible_text(text: str, stops: list[str], matched: Optional[str], finished: bool, no_stop_trim: bool) -> str:
    """The part of `text` a client may see: cut at a matched stop string once finished, and
    while running, hold back a tail that could still grow into a stop string."""
    if not stops:
        return text
    if finished:
        if matched is not None and not no_stop_trim:
            at = text.find(matched)
            if at >= 0:
                return text[:at]
        return text
    for s in stops:
        at = text.find(s)
        if at >= 0:
            return text[:at]
    hold = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                hold = max(hold, k)
                break
    return text[: len(text) - hold]
