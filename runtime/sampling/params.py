"""Per-request sampling parameters with SGLang's names. `from_dict` validates untrusted input and
raises ValueError naming the offending field; nothing invalid reaches the scheduler."""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Optional, Union

_INT = (int,)
_NUM = (int, float)


@dataclass
class SamplingParams:
    max_new_tokens: int = 128
    min_new_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    stop: list[str] = field(default_factory=list)
    stop_regex: list[str] = field(default_factory=list)  # stop once the output matches one
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    no_stop_trim: bool = False
    logit_bias: dict[int, float] = field(default_factory=dict)
    seed: Optional[int] = None
    n: int = 1
    regex: Optional[str] = None
    json_schema: Optional[str] = None
    ebnf: Optional[str] = None
    structural_tag: Optional[str] = None
    stream_interval: Optional[int] = None  # this request's --stream-interval
    custom_params: Optional[dict[str, Any]] = None  # stored for the caller; nothing reads it

    @classmethod
    def from_dict(cls, d: Optional[dict[str, Any]]) -> "SamplingParams":
        if d is None:
            return cls()
        if isinstance(d, SamplingParams):
            return dataclasses.replace(d)
        if not isinstance(d, dict):
            raise ValueError(f"sampling_params must be a dict, got {type(d).__name__}")
        d = dict(d)
        if "sampling_seed" in d:  # SGLang's newer spelling
            d.setdefault("seed", d.pop("sampling_seed"))
        _drop_unsupported(d)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(k for k in d if k not in names)
        if unknown:
            raise ValueError(f"unknown sampling parameter(s): {', '.join(unknown)}")
        kwargs = {k: _coerce(k, v) for k, v in d.items() if v is not None}
        params = cls(**kwargs)
        params.check()
        return params

    def check(self) -> None:
        """Range checks that need no model knowledge."""
        _require(self.max_new_tokens >= 0, "max_new_tokens", "must be >= 0")
        _require(self.min_new_tokens >= 0, "min_new_tokens", "must be >= 0")
        _require(self.min_new_tokens <= self.max_new_tokens, "min_new_tokens", "must be <= max_new_tokens")
        _require(self.temperature >= 0, "temperature", "must be >= 0")
        _require(0 < self.top_p <= 1, "top_p", "must be in (0, 1]")
        _require(self.top_k == -1 or self.top_k >= 1, "top_k", "must be -1 (off) or >= 1")
        _require(0 <= self.min_p <= 1, "min_p", "must be in [0, 1]")
        _require(-2 <= self.frequency_penalty <= 2, "frequency_penalty", "must be in [-2, 2]")
        _require(-2 <= self.presence_penalty <= 2, "presence_penalty", "must be in [-2, 2]")
        _require(0 < self.repetition_penalty <= 2, "repetition_penalty", "must be in (0, 2]")
        _require(self.n >= 1, "n", "must be >= 1")
        _require(self.stream_interval is None or self.stream_interval >= 1, "stream_interval",
                 "must be >= 1")
        grammars = [k for k in ("regex", "json_schema", "ebnf", "structural_tag") if getattr(self, k)]
        _require(len(grammars) <= 1, grammars[-1] if grammars else "regex",
                 f"only one of regex, json_schema, ebnf, structural_tag may be set (got {grammars})")

    def verify(self, vocab_size: int) -> None:
        """Checks that need the vocabulary."""
        for t in self.stop_token_ids:
            _require(0 <= t < vocab_size, "stop_token_ids", f"token id {t} outside [0, {vocab_size})")
        for t in self.logit_bias:
            _require(0 <= t < vocab_size, "logit_bias", f"token id {t} outside [0, {vocab_size})")

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_FLOATS = {"temperature", "top_p", "min_p", "frequency_penalty", "presence_penalty", "repetition_penalty"}
_INTS = {"max_new_tokens", "min_new_tokens", "top_k", "seed", "n", "stream_interval"}
_BOOLS = {"ignore_eos", "skip_special_tokens", "spaces_between_special_tokens", "no_stop_trim"}
_STRS = {"regex", "json_schema", "ebnf", "structural_tag"}


MAX_LOGIT_BIAS = 100


def _require(ok: bool, name: str, why: str) -> None:
    if not ok:
        raise ValueError(f"sampling_params.{name} {why}")


def _coerce(name: str, v: Any) -> Any:
    if name in _BOOLS:
        _require(isinstance(v, bool), name, f"must be a boolean, got {type(v).__name__}")
        return v
    if name in _INTS:
        _require(isinstance(v, int) and not isinstance(v, bool), name, f"must be an integer, got {v!r}")
        return v
    if name in _FLOATS:
        _require(isinstance(v, _NUM) and not isinstance(v, bool), name, f"must be a number, got {v!r}")
        _require(v == v and abs(v) != float("inf"), name, "must be finite")
        return float(v)
    if name in _STRS:
        if name in ("json_schema", "structural_tag") and isinstance(v, dict):
            import json
            return json.dumps(v)
        _require(isinstance(v, str), name, f"must be a string, got {type(v).__name__}")
        return v
    if name == "stop":
        return _str_list(v)
    if name == "stop_regex":
        return _regex_list(v)
    if name == "custom_params":
        _require(isinstance(v, dict), name, f"must be an object, got {type(v).__name__}")
        return dict(v)
    if name == "stop_token_ids":
        v = [v] if isinstance(v, int) and not isinstance(v, bool) else v
        _require(isinstance(v, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in v),
                 name, "must be a list of integers")
        return list(v)
    if name == "logit_bias":
        _require(isinstance(v, dict), name, "must be a dict of token id -> bias")
        out = {}
        for k, b in v.items():
            try:
                tid = int(k)
            except (TypeError, ValueError):
                raise ValueError(f"sampling_params.logit_bias key {k!r} is not a token id") from None
            _require(isinstance(b, _NUM) and not isinstance(b, bool), name, f"bias for {k!r} must be a number")
            # OpenAI's range: a larger bias overflows the logits (inf/NaN) instead of banning a token
            _require(-MAX_LOGIT_BIAS <= b <= MAX_LOGIT_BIAS, name,
                     f"bias for {k!r} must be in [-{MAX_LOGIT_BIAS}, {MAX_LOGIT_BIAS}], got {b!r}")
            out[tid] = float(b)
        return out
    return v


def _str_list(v: Union[str, list, None]) -> list[str]:
    if v is None:
        return []
    if isinstance(v, str):
        v = [v]
    _require(isinstance(v, list) and all(isinstance(s, str) for s in v), "stop", "must be a string or list of strings")
    _require(all(s for s in v), "stop", "must not contain empty strings")
    return list(v)


# Most stop_regex patterns, and longest, a request may send (SGLang has limits of the same kind):
# each is searched in the output's tail after every token.
MAX_STOP_REGEX = 16
MAX_STOP_REGEX_LEN = 1024


def _regex_list(v: Union[str, list, None]) -> list[str]:
    v = [v] if isinstance(v, str) else v
    _require(isinstance(v, list) and all(isinstance(s, str) for s in v), "stop_regex",
             "must be a string or list of strings")
    _require(len(v) <= MAX_STOP_REGEX, "stop_regex", f"takes at most {MAX_STOP_REGEX} patterns")
    for pattern in v:
        _require(0 < len(pattern) <= MAX_STOP_REGEX_LEN, "stop_regex",
                 f"patterns must be 1 to {MAX_STOP_REGEX_LEN} characters")
        try:
            compiled = re.compile(pattern)
        except (re.error, RecursionError) as e:
            raise ValueError(f"sampling_params.stop_regex {pattern!r} is not a valid regex: {e}") from None
        _require(compiled.search("") is None, "stop_regex",
                 f"{pattern!r} matches the empty string, so it would stop at once")
    return list(v)


# SGLang sampling parameters of features sgl lacks: their default is accepted (and dropped);
# any other value is an error naming the feature.
_UNSUPPORTED = {"beam_width": ("beam search", (None, 1)), "watermark": ("watermarking", (None,)),
                "ebnf_full_assistant": ("ebnf over the whole assistant turn", (None, False))}


def _drop_unsupported(d: dict[str, Any]) -> None:
    for name, (feature, neutral) in _UNSUPPORTED.items():
        if name not in d:
            continue
        value = d.pop(name)
        _require(any(value is n or (value == n and type(value) is type(n)) for n in neutral), name,
                 f"asks for {feature}, which sgl does not support; omit it or send "
                 f"{' or '.join('null' if n is None else str(n).lower() for n in neutral)}")
