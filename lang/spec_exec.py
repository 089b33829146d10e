"""API speculative execution: `@sgl.function(num_api_spec_tokens=N)`, as in SGLang.

For backends that can only continue text and charge per call (OpenAI completion models), the
first `gen` asks for one completion of `max(its max_new_tokens, N)` tokens with no stop, and
that speculated text then serves this gen and the following ones:

- a gen's value is the speculated text up to its first stop string; the stop string itself stays
  in the buffer, so constant text that starts with it (`"\\n"`, `"\\nAge:"`) is matched next;
- every piece of text the program appends (constants, role prefixes/suffixes, variables, select
  decisions, the gen values themselves) is checked against the buffer: a match consumes it, a
  mismatch discards the whole buffer;
- a gen that finds the buffer empty issues a new speculative call from the current text;
- a gen whose stop string is not in the buffer takes the rest of it, cut to max_new_tokens
  *characters* (SGLang's rule: the backend returns text, not tokens).

Only non-chat backends, non-streamed runs, and gens without regex/json_schema/dtype and with
n == 1 are speculated; other gens call the backend as usual (their output is still checked
against the buffer). The gen that made the call gets its meta_info; gens served from the
buffer get `{}`.

Differences from SGLang, each to keep results correct where SGLang's are not:
- a stop string that is missing from a buffer left over by an earlier call that was cut by its
  token limit (finish_reason "length") means the buffer ended mid-value: it is discarded and a
  new speculative call is made, instead of returning the truncated value;
- the length cut uses the gen's own max_new_tokens (SGLang uses the enlarged one after a call);
- select decisions consume or discard the buffer (SGLang leaves it stale).
As in SGLang, fork branches and compiled programs do not speculate, and chat models (where
SGLang batches the gens of one assistant turn) run as without `num_api_spec_tokens`."""
from __future__ import annotations

import dataclasses
from typing import Any

from sgl.lang.ir import SglSamplingParams


class ApiSpeculator:
    """The speculated-text buffer of one stream."""

    def __init__(self, num_spec_tokens: int) -> None:
        self.num_spec_tokens = num_spec_tokens
        self.text = ""  # speculated continuation of s.text_, not yet used by the program
        self.is_truncated = False  # the call that produced `text` stopped at its token limit

    @staticmethod
    def can_serve(params: SglSamplingParams) -> bool:
        return (params.resolved_regex() is None and params.json_schema is None
                and (params.n or 1) == 1)

    def gen(self, s: Any, params: SglSamplingParams) -> tuple[str, dict[str, Any]]:
        """The value of a gen at the end of `s.text_`. The buffer is not advanced here: the
        interpreter advances it by all appended text, this value included."""
        meta_info: dict[str, Any] = {}
        is_fresh = not self.text
        if is_fresh:
            meta_info = self._speculate(s, params)
        comp = self._cut_at_stop(params.stop)
        if comp is None and not is_fresh and self.is_truncated:
            meta_info = self._speculate(s, params)  # the value may run past the old buffer
            comp = self._cut_at_stop(params.stop)
        if comp is None:
            comp = self.text[:params.max_new_tokens or len(self.text)]
        return comp, meta_info

    def advance(self, appended: str) -> None:
        """The program appended `appended`: consume it if it was speculated, else discard."""
        if self.text.startswith(appended):
            self.text = self.text[len(appended):]
        else:
            self.text = ""

    def _speculate(self, s: Any, params: SglSamplingParams) -> dict[str, Any]:
        spec_params = dataclasses.replace(
            params, stop=[], max_new_tokens=max(params.max_new_tokens or 0, self.num_spec_tokens))
        text, meta_info = s.backend.generate(s, sampling_params=spec_params)
        self.text = text
        self.is_truncated = _is_length_finish(meta_info)
        return meta_info

    def _cut_at_stop(self, stop: Any) -> str | None:
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        found = [pos for pos in (self.text.find(x) for x in stops if x) if pos != -1]
        return self.text[:min(found)] if found else None


def make_speculator(num_api_spec_tokens: int | None, backend: Any, stream: bool) -> ApiSpeculator | None:
    """A speculator where SGLang would speculate on a completion interface, else None."""
    if not num_api_spec_tokens or stream or getattr(backend, "is_chat_model", False):
        return None
    return ApiSpeculator(int(num_api_spec_tokens))


def _is_length_finish(meta_info: Any) -> bool:
    reason = meta_info.get("finish_reason") if isinstance(meta_info, dict) else None
    if isinstance(reason, dict):  # SGLang's native meta_info: {"type": "length", ...}
        reason = reason.get("type")
    return reason == "length"
