"""Grammar backend interface, registry, front-end validation and token-bitmask helpers.

Masks are packed bitmasks: an int32 tensor (batch, ceil(vocab_size / 32)) on CPU, bit j of word
w of a row set <=> token 32 * w + j is allowed. Both backends write this format natively from
C++/Rust (xgrammar `fill_next_token_bitmask`, outlines-core `Guide.write_mask_into`), which is
much cheaper on CPU than building a (V,) bool tensor from a list of allowed ids. The scheduler
fills one row per constrained request, then either applies the bitmask to the logits with
`apply_token_bitmask` (fastest) or unpacks it with `bitmask_to_bool` for a sampler that takes a
(bs, V) bool mask.

EOS contract: while the text so far can end, the mask allows the stop tokens; when it can only
end, the stop tokens are the only allowed tokens. Accepting a stop token terminates the grammar
(`is_terminated()`), after which the mask allows only the stop tokens.
"""
from __future__ import annotations

import importlib
import json
import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

GRAMMAR_KINDS = ("json", "regex", "ebnf", "structural_tag")
ANY_JSON_OBJECT = "$$ANY$$"
"""kind="json" text meaning "any JSON object" (response_format json_object); the same as the
schema {"type": "object"}, whose properties are free."""
ANY_JSON_OBJECT_SCHEMA = '{"type": "object"}'


class Grammar(ABC):
    """The matcher state of one request over a compiled grammar.

    A Grammar is created by `GrammarBackend.compile` (or `copy()` of a compiled one) and only
    ever advanced by the scheduler thread. Token ids are model vocab ids.
    """

    @abstractmethod
    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        """Write the allowed next tokens into bitmask[row] (int32, CPU, (bs, ceil(V/32)))."""

    @abstractmethod
    def accept_token(self, token_id: int) -> bool:
        """Advance by one token. Returns False, leaving the state unchanged, if it is not
        allowed. Accepting a stop token when the text can end terminates the grammar."""

    @abstractmethod
    def rollback(self, num_tokens: int) -> None:
        """Undo the last num_tokens accepted tokens (a stop token counts as one)."""

    @abstractmethod
    def is_terminated(self) -> bool:
        """True once a stop token was accepted: the request is finished."""

    @abstractmethod
    def jump_forward_str(self) -> str | None:
        """The continuation the grammar forces from the current state, or None when nothing
        (or too little to be worth an extend step) is forced. Does not change the state."""

    # Subclasses keep their compiled grammar and backend here, and count accepted tokens.
    _compiled: Any
    _backend: Any
    _num_accepted: int = 0

    def copy(self) -> Grammar:
        """A fresh matcher (initial state) over the same compiled grammar."""
        return type(self)(self._compiled, self._backend)

    @property
    def num_accepted(self) -> int:
        """Tokens accepted so far (and not rolled back), the stop token included."""
        return self._num_accepted

    def jump_forward_string(self) -> str | None:
        """Alias of `jump_forward_str` (the name used in DESIGN.md)."""
        return self.jump_forward_str()

    def jump_and_retokenize(self, old_output_ids: list[int], new_output_ids: list[int]) -> bool:
        """Move the state from old_output_ids (all accepted) to new_output_ids, the output
        re-tokenized after appending a jump-forward string: roll back to the common prefix,
        then accept the new tail. If a new token is refused the state is restored to
        old_output_ids and False is returned (the scheduler then keeps the old ids)."""
        assert self.num_accepted == len(old_output_ids), (self.num_accepted, len(old_output_ids))
        k = common_prefix_len(old_output_ids, new_output_ids)
        self.rollback(len(old_output_ids) - k)
        for i, token_id in enumerate(new_output_ids[k:]):
            if not self.accept_token(token_id):
                self.rollback(i)
                restored = all(self.accept_token(t) for t in old_output_ids[k:])
                assert restored, "grammar refused tokens it had accepted before"
                return False
        return True


class GrammarBackend(ABC):
    """Compiles grammar specs for one tokenizer. `compile` may run on a worker thread; it must
    not touch scheduler state. Invalid input raises ValueError naming the problem."""

    name: str = ""
    supported_kinds: tuple[str, ...] = GRAMMAR_KINDS

    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: list[int] | None,
                 any_whitespace: bool, jump_forward_min_chars: int) -> None:
        self.vocab_size = vocab_size
        self.stop_token_ids = resolve_stop_token_ids(tokenizer, stop_token_ids)
        self.any_whitespace = any_whitespace
        self.jump_forward_min_chars = jump_forward_min_chars

    def compile(self, kind: str, text: str) -> Grammar:
        """Compile (kind, text) into a Grammar in its initial state."""
        check_kind(kind, self.supported_kinds, self.name)
        return self._compile(kind, text)

    @abstractmethod
    def _compile(self, kind: str, text: str) -> Grammar: ...

    def fill_bitmasks(self, grammars: list[Grammar], bitmask: torch.Tensor, rows: list[int]) -> None:
        """Fill bitmask[rows[i]] for grammars[i], all of this backend; a backend whose masks
        cost real time per row (xgrammar) fills them on several threads."""
        for g, row in zip(grammars, rows):
            g.fill_bitmask(bitmask, row)


_REGISTRY: dict[str, type[GrammarBackend]] = {}
_MODULES = {"xgrammar": "xgrammar_backend", "outlines": "outlines_backend"}


def register_grammar_backend(name: str):
    def wrap(cls: type[GrammarBackend]) -> type[GrammarBackend]:
        cls.name = name
        _REGISTRY[name] = cls
        return cls
    return wrap


def create_grammar_backend(name: str, tokenizer: Any, vocab_size: int, *,
                           stop_token_ids: list[int] | None = None,
                           any_whitespace: bool = False,
                           jump_forward_min_chars: int = 4) -> GrammarBackend | None:
    """name: "xgrammar" | "outlines" | "none" (-> None). vocab_size is the model's (the mask
    width; may exceed len(tokenizer)). stop_token_ids default to the tokenizer's EOS.
    any_whitespace=False generates compact JSON (no free whitespace: no whitespace loops, and
    keys become forced so jump-forward pays); True allows free whitespace between tokens."""
    if name == "none":
        return None
    if name not in _MODULES:
        raise ValueError(f"unknown grammar backend {name!r}; expected one of "
                         f"{sorted(_MODULES) + ['none']}")
    importlib.import_module(f"{__package__}.{_MODULES[name]}")
    return _REGISTRY[name](tokenizer, vocab_size, stop_token_ids, any_whitespace,
                           jump_forward_min_chars)


def resolve_stop_token_ids(tokenizer: Any, stop_token_ids: list[int] | None) -> list[int]:
    ids = list(stop_token_ids) if stop_token_ids else []
    if not ids and getattr(tokenizer, "eos_token_id", None) is not None:
        ids = [tokenizer.eos_token_id]
    if not ids:
        raise ValueError("the tokenizer has no eos_token_id; pass stop_token_ids")
    return ids


def check_kind(kind: str, supported: tuple[str, ...], backend: str) -> None:
    if kind not in GRAMMAR_KINDS:
        raise ValueError(f"unknown grammar kind {kind!r}; expected one of {GRAMMAR_KINDS}")
    if kind not in supported:
        raise ValueError(f"the {backend} grammar backend does not support {kind!r} "
                         f"(supported: {', '.join(supported)}); use --grammar-backend xgrammar")


def validate(kind: str, text: str, backend: str = "xgrammar") -> None:
    """Quick synchronous check for the front end (no token masks are built): raises ValueError
    for malformed input so the server can answer 400 before the scheduler sees the request."""
    if backend == "outlines":
        check_kind(kind, ("json", "regex"), backend)
    else:
        check_kind(kind, GRAMMAR_KINDS, backend)
    if not isinstance(text, str) or not text:
        raise ValueError(f"the {kind} grammar must be a non-empty string")
    try:
        _VALIDATORS[kind](text)
    except RecursionError:  # a schema or regex nested deeper than the checkers' stacks
        raise ValueError(f"the {kind} grammar is nested too deeply") from None


def _validate_json_schema(text: str) -> None:
    if text == ANY_JSON_OBJECT:
        return
    schema = parse_json(text, "JSON schema")
    if not isinstance(schema, (dict, bool)):
        raise ValueError(  # noqa: TRY004 - the contract: bad grammar input is a ValueError
            f"a JSON schema must be an object or a boolean, got {type(schema).__name__}")
    try:
        import jsonschema
    except ImportError:
        return
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as e:
        raise ValueError(f"invalid JSON schema: {e.message}") from None


def _validate_regex(text: str) -> None:
    try:
        re.compile(text)
        return
    except re.error as e:
        python_error = e
    try:  # some syntax the backends accept (e.g. \p{L}) is foreign to Python's re
        import interegular
        interegular.parse_pattern(text)
    except Exception:  # noqa: BLE001 - interegular raises several unrelated types
        raise ValueError(f"invalid regex: {python_error}") from None


def _validate_ebnf(text: str) -> None:
    import xgrammar
    try:
        xgrammar.Grammar.from_ebnf(text)
    except (RuntimeError, ValueError, TypeError) as e:
        raise ValueError(f"invalid EBNF grammar: {backend_error_message(e)}") from None


def _validate_structural_tag(text: str) -> None:
    import xgrammar
    parse_json(text, "structural tag")
    try:
        xgrammar.Grammar.from_structural_tag(text)
    except (RuntimeError, ValueError, TypeError) as e:
        raise ValueError(f"invalid structural tag: {backend_error_message(e)}") from None


_VALIDATORS = {"json": _validate_json_schema, "regex": _validate_regex,
               "ebnf": _validate_ebnf, "structural_tag": _validate_structural_tag}


_SCHEMA_VALUE_KEYS = ("enum", "const", "default", "examples")  # data, not subschemas


def rewrite_schema(node: Any, fn: Callable[[dict], dict | None]) -> Any:
    """A copy of a JSON schema where each subschema s for which fn(s) is not None is replaced
    by fn(s) (and not descended into)."""
    if isinstance(node, list):
        return [rewrite_schema(x, fn) for x in node]
    if not isinstance(node, dict):
        return node
    replaced = fn(node)
    if replaced is not None:
        return replaced
    return {k: v if k in _SCHEMA_VALUE_KEYS else rewrite_schema(v, fn) for k, v in node.items()}


def parse_json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"invalid {what}: not valid JSON ({e})") from None


def backend_error_message(e: BaseException) -> str:
    """The useful part of a backend error: xgrammar prefixes '[time] file.cc:line: '."""
    msg = str(e).strip()
    return re.sub(r"^\[[0-9:]+\] \S+:\d+: ", "", msg).splitlines()[0] if msg else type(e).__name__


def common_prefix_len(a: list[int], b: list[int]) -> int:
    k = 0
    for x, y in zip(a, b):
        if x != y:
            break
        k += 1
    return k


# ---- bitmask helpers --------------------------------------------------------------------------

def bitmask_width(vocab_size: int) -> int:
    return (vocab_size + 31) // 32


def allocate_token_bitmask(batch_size: int, vocab_size: int,
                           pin_memory: bool = False) -> torch.Tensor:
    """(batch_size, ceil(V/32)) int32 on CPU, all tokens allowed. Pin it when the logits live
    on a GPU so the copy in `apply_token_bitmask` is asynchronous."""
    return torch.full((batch_size, bitmask_width(vocab_size)), -1, dtype=torch.int32,
                      pin_memory=pin_memory)


def set_token_bits(bitmask_row: torch.Tensor, token_ids: list[int], vocab_size: int) -> None:
    """Clear a (W,) int32 CPU row, then allow exactly token_ids."""
    bitmask_row.zero_()
    allow_token_bits(bitmask_row, token_ids, vocab_size)


def allow_token_bits(bitmask_row: torch.Tensor, token_ids: list[int], vocab_size: int) -> None:
    """Also allow token_ids in a (W,) int32 CPU row."""
    words = bitmask_row.numpy().view(np.uint32)  # shares memory; unsigned avoids bit-31 overflow
    for t in token_ids:
        if 0 <= t < vocab_size:
            words[t // 32] |= np.uint32(1 << (t % 32))


_SHIFTS: dict[torch.device, torch.Tensor] = {}


def bitmask_to_bool(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """(bs, W) int32 -> (bs, vocab_size) bool, True = allowed. Runs on the bitmask's device."""
    shifts = _SHIFTS.get(bitmask.device)
    if shifts is None:
        shifts = torch.arange(32, dtype=torch.int32, device=bitmask.device)
        _SHIFTS[bitmask.device] = shifts
    bits = (bitmask.unsqueeze(-1) >> shifts) & 1  # (bs, W, 32)
    return bits.view(bitmask.shape[0], -1)[:, :vocab_size].bool()


def apply_token_bitmask(logits: torch.Tensor, bitmask: torch.Tensor,
                        indices: list[int] | None = None) -> None:
    """Set logits of disallowed tokens to -inf, in place. logits: (bs, V) float on any device;
    bitmask: (bs, W) int32 (copied to logits' device); indices: rows to mask (default all)."""
    bitmask = bitmask.to(logits.device, non_blocking=True)
    try:
        import xgrammar
    except ImportError:
        xgrammar = None
    if xgrammar is not None and logits.dtype in (torch.float32, torch.float16, torch.bfloat16):
        xgrammar.apply_token_bitmask_inplace(logits, bitmask, vocab_size=logits.shape[-1],
                                             indices=indices)
        return
    rows = slice(None) if indices is None else torch.tensor(indices, device=logits.device)
    allowed = bitmask_to_bool(bitmask[rows], logits.shape[-1])
    logits[rows] = logits[rows].masked_fill(~allowed, float("-inf"))
