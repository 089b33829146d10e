"""Regexes for bounded JSON integers and numbers.

outlines-core's schema-to-regex ignores minimum/maximum, so the outlines backend swaps each
bounded numeric subschema for a placeholder constant and splices in a regex from here. Integers
are exact; numbers are an inner approximation of the interval (integer parts within the integer
bounds, fractions only where every fraction stays inside), so everything generated validates.
"""
from __future__ import annotations

import math


def _digits_range(lo: str, hi: str) -> str:
    """Regex for the decimal strings of one length n from lo to hi (lo <= hi, both n digits)."""
    if lo == hi:
        return lo
    n = len(lo)
    if n == 1:
        return f"[{lo}-{hi}]"
    if lo[1:] == "0" * (n - 1) and hi[1:] == "9" * (n - 1):
        return f"{_char_class(lo[0], hi[0])}[0-9]{{{n - 1}}}"
    if lo[0] == hi[0]:
        return lo[0] + _group(_digits_range(lo[1:], hi[1:]))
    parts = [lo[0] + _group(_digits_range(lo[1:], "9" * (n - 1)))]
    if int(hi[0]) - int(lo[0]) > 1:
        parts.append(f"{_char_class(str(int(lo[0]) + 1), str(int(hi[0]) - 1))}[0-9]{{{n - 1}}}")
    parts.append(hi[0] + _group(_digits_range("0" * (n - 1), hi[1:])))
    return "|".join(parts)


def _char_class(a: str, b: str) -> str:
    return a if a == b else f"[{a}-{b}]"


def _group(r: str) -> str:
    return f"(?:{r})" if "|" in r else r


def natural_range(lo: int, hi: int | None) -> str | None:
    """Regex for the canonical decimals of lo..hi (0 <= lo; hi None = unbounded), or None if
    the range is empty."""
    if hi is not None and hi < lo:
        return None
    parts = []
    hi_len = len(str(hi)) if hi is not None else len(str(lo))
    for n in range(len(str(lo)), hi_len + 1):
        a = max(lo, 0 if n == 1 else 10 ** (n - 1))
        b = 10 ** n - 1 if hi is None else min(hi, 10 ** n - 1)
        if a <= b:
            parts.append(_digits_range(str(a).zfill(n), str(b).zfill(n)))
    if hi is None:  # every number with more digits than lo is above it
        parts.append(f"[1-9][0-9]{{{hi_len},}}")
    return "|".join(parts)


def integer_range(lo: int | None, hi: int | None) -> str | None:
    """Regex for the JSON integers in [lo, hi] (None = unbounded), or None if empty."""
    if lo is not None and hi is not None and hi < lo:
        return None
    parts = []
    if lo is None or lo < 0:  # negatives: -m with m in [max(1, -hi), -lo]
        neg = natural_range(max(1, -hi) if hi is not None else 1, None if lo is None else -lo)
        if neg:
            parts.append(f"-(?:{neg})")
    if hi is None or hi >= 0:
        pos = natural_range(max(lo, 0) if lo is not None else 0, hi)
        if pos:
            parts.append(pos)
    return "|".join(parts) or None


def _integer_bounds(spec: dict) -> tuple[int | None, int | None]:
    """The smallest and largest integers inside the spec's bounds (draft-4 boolean exclusives
    too); None where unbounded."""
    lo = hi = None
    for key, excl_key, is_lo in (("minimum", "exclusiveMinimum", True),
                                 ("maximum", "exclusiveMaximum", False)):
        for value, exclusive in ((spec.get(key), spec.get(excl_key) is True),
                                 (spec.get(excl_key), True)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if is_lo:
                b = math.floor(value) + 1 if exclusive else math.ceil(value)
                lo = b if lo is None else max(lo, b)
            else:
                b = math.ceil(value) - 1 if exclusive else math.floor(value)
                hi = b if hi is None else min(hi, b)
    return lo, hi


def has_numeric_bounds(spec: dict) -> bool:
    return spec.get("type") in ("integer", "number") and any(
        k in spec for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"))


def numeric_regex(spec: dict) -> str:
    """Regex for a bounded {"type": "integer"|"number"} subschema. ValueError if empty."""
    lo, hi = _integer_bounds(spec)
    ints = integer_range(lo, hi)
    parts = [ints] if ints else []
    if spec["type"] == "number":
        # x.f (x >= 0) lies in [x, x + 1): inside when x + 1 <= hi; -m.f when -(m + 1) >= lo;
        # -0.f when lo < 0 <= hi.
        pos = natural_range(max(lo, 0) if lo is not None else 0, None if hi is None else hi - 1)
        neg = natural_range(max(1, -hi) if hi is not None else 1, None if lo is None else -lo - 1)
        parts += [f"(?:{r})\\.[0-9]+" for r in (pos,) if r]
        parts += [f"-(?:{r})\\.[0-9]+" for r in (neg,) if r]
        if (lo is None or lo < 0) and (hi is None or hi >= 0):
            parts.append("-0\\.[0-9]+")  # -0.0 is 0, inside too
    if not parts:
        raise ValueError(f"invalid JSON schema: no {spec['type']} satisfies the bounds of {spec}")
    return "(?:" + "|".join(parts) + ")"
