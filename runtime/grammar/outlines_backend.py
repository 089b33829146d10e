"""outlines-core backend: JSON schema and regex, compiled to a token-level DFA index.

Differences from xgrammar worth knowing: compact JSON has no spaces at all (`{"a":1}`; the
schema-to-regex translation has one whitespace pattern for every position); numeric bounds are
spliced in by `regex_ranges` because outlines-core ignores them; jump-forward strings are read
off the token DFA (`jump_forward.forced_bytes`) and cached per DFA state.
"""
from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

import outlines_core as oc
import torch
from outlines_core.json_schema import WHITESPACE, build_regex_from_schema

from . import regex_ranges
from .base import (
    ANY_JSON_OBJECT,
    ANY_JSON_OBJECT_SCHEMA,
    Grammar,
    GrammarBackend,
    allow_token_bits,
    parse_json,
    register_grammar_backend,
    rewrite_schema,
    set_token_bits,
)
from .jump_forward import forced_bytes, utf8_prefix

# Index construction walks every vocabulary token from every DFA state; past this many
# (positions x tokens) steps a compile would take minutes, so it is refused up front.
MAX_INDEX_WORK = 1_000_000_000
_MAX_ROLLBACK = 1 << 30  # the Guide's history grows as needed; this is only a cap


@dataclass
class _Compiled:
    index: oc.Index
    jump_cache: dict[int, str] = field(default_factory=dict)  # DFA state -> forced text


class OutlinesGrammar(Grammar):
    def __init__(self, compiled: _Compiled, backend: OutlinesBackend) -> None:
        self._compiled = compiled
        self._backend = backend
        self._guide = oc.Guide(compiled.index, max_rollback=_MAX_ROLLBACK)
        self._num_accepted = 0
        self._is_terminated = False

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        words = bitmask[row]
        assert words.dtype == torch.int32 and words.is_contiguous() and words.device.type == "cpu"
        stop_ids = self._backend.stop_token_ids
        if self._is_terminated:
            set_token_bits(words, stop_ids, self._backend.vocab_size)
            return
        self._guide.write_mask_into(words.data_ptr(), words.numel(), 4)
        if len(stop_ids) > 1 and self._guide.is_finished():  # the index knows one EOS only
            allow_token_bits(words, stop_ids, self._backend.vocab_size)

    def accept_token(self, token_id: int) -> bool:
        if self._is_terminated:
            return False
        if token_id in self._backend.stop_token_set:
            if not self._guide.is_finished():
                return False
            self._is_terminated = True
        else:
            try:
                self._guide.advance(int(token_id), return_tokens=False)
            except ValueError:
                return False
        self._num_accepted += 1
        return True

    def rollback(self, num_tokens: int) -> None:
        if num_tokens <= 0:
            return
        assert num_tokens <= self._num_accepted, (num_tokens, self._num_accepted)
        self._num_accepted -= num_tokens
        if self._is_terminated:  # the stop token never entered the guide
            self._is_terminated = False
            num_tokens -= 1
        if num_tokens:
            self._guide.rollback_state(num_tokens)

    def is_terminated(self) -> bool:
        return self._is_terminated

    def jump_forward_str(self) -> str | None:
        if self._is_terminated:
            return None
        state = self._guide.get_state()
        s = self._compiled.jump_cache.get(state)
        if s is None:
            index = self._compiled.index
            s = utf8_prefix(forced_bytes(state, index.get_allowed_tokens, index.get_next_state,
                                         index.is_final_state, self._backend.token_bytes))
            self._compiled.jump_cache[state] = s
        return s if len(s) >= self._backend.jump_forward_min_chars else None



@register_grammar_backend("outlines")
class OutlinesBackend(GrammarBackend):
    supported_kinds = ("json", "regex")

    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: list[int] | None,
                 any_whitespace: bool, jump_forward_min_chars: int) -> None:
        super().__init__(tokenizer, vocab_size, stop_token_ids, any_whitespace,
                         jump_forward_min_chars)
        self.stop_token_set = frozenset(self.stop_token_ids)
        self.token_bytes = token_bytes_table(tokenizer, vocab_size)
        spellings: dict[bytes, list[int]] = {}
        for token_id, b in enumerate(self.token_bytes):
            if b and token_id not in self.stop_token_set:
                spellings.setdefault(b, []).append(token_id)
        self._vocabulary = oc.Vocabulary(self.stop_token_ids[0], spellings)

    def _compile(self, kind: str, text: str) -> OutlinesGrammar:
        regex = ascii_digits(self._schema_regex(text) if kind == "json" else text)
        check_regex_size(regex, self.vocab_size)
        try:
            index = oc.Index(regex, self._vocabulary)
        except (ValueError, RuntimeError) as e:
            what = "JSON schema" if kind == "json" else "regex"
            raise ValueError(f"invalid {what}: {_regex_error(regex, e)}") from None
        return OutlinesGrammar(_Compiled(index), self)

    def _schema_regex(self, text: str) -> str:
        schema = parse_json(ANY_JSON_OBJECT_SCHEMA if text == ANY_JSON_OBJECT else text,
                            "JSON schema")
        ranges: dict[str, str] = {}
        schema = _bounded_numbers_to_placeholders(schema, ranges, uuid.uuid4().hex[:12])
        whitespace = WHITESPACE if self.any_whitespace else ""
        try:
            regex = build_regex_from_schema(json.dumps(schema), whitespace)
        except (ValueError, RuntimeError, TypeError) as e:
            raise ValueError(f"invalid JSON schema: {e}") from None
        for placeholder, sub in ranges.items():
            regex = regex.replace(json.dumps(placeholder), sub)
        return regex


def _bounded_numbers_to_placeholders(schema: Any, ranges: dict[str, str], tag: str) -> Any:
    """Each bounded integer/number subschema becomes a unique string constant; ranges maps the
    constant to the regex that replaces its JSON spelling in the generated regex."""
    def replace(node: dict) -> dict | None:
        if not regex_ranges.has_numeric_bounds(node):
            return None
        placeholder = f"SGLRANGE{tag}N{len(ranges)}"
        ranges[placeholder] = regex_ranges.numeric_regex(node)
        return {"const": placeholder}
    return rewrite_schema(schema, replace)


def ascii_digits(regex: str) -> str:
    """Rewrite \\d as [0-9]: outlines-core's \\d is any Unicode digit (xgrammar's is ASCII),
    which lets a model answer a phone-number regex in Bengali digits."""
    out, i, in_class = [], 0, False
    while i < len(regex):
        c = regex[i]
        if c == "\\" and i + 1 < len(regex):
            esc = regex[i:i + 2]
            out.append(("0-9" if in_class else "[0-9]") if esc == "\\d" else esc)
            i += 2
            continue
        if c == "[" and not in_class:
            in_class = True
            j = i + 1 + (regex[i + 1:i + 2] == "^")
            j += regex[j:j + 1] == "]"  # a leading ] is a literal
            out.append(regex[i:j])
            i = j
            continue
        if c == "]" and in_class:
            in_class = False
        out.append(c)
        i += 1
    return "".join(out)


def _regex_error(regex: str, e: Exception) -> str:
    try:
        re.compile(regex)
    except re.error as py_err:
        return str(py_err)
    return str(e)


def check_regex_size(regex: str, vocab_size: int) -> None:
    """Refuse regexes whose index would take minutes (e.g. nested bounded repeats)."""
    positions = regex_positions(regex)
    if positions is not None and positions * vocab_size > MAX_INDEX_WORK:
        raise ValueError(f"regex too large for the outlines backend (~{positions} automaton "
                         f"positions); simplify it or use --grammar-backend xgrammar")


def regex_positions(regex: str) -> int | None:
    """Rough size of the regex's position automaton with repeats unrolled; None if Python
    cannot parse it."""
    try:
        import re._parser as sre_parse
    except ImportError:  # Python < 3.11
        import sre_parse
    try:
        return _count_positions(sre_parse.parse(regex), sre_parse)
    except (re.error, RecursionError, OverflowError, ValueError):
        return None


def _count_positions(items: Any, sre: Any) -> int:
    repeats = (sre.MAX_REPEAT, sre.MIN_REPEAT, getattr(sre, "POSSESSIVE_REPEAT", sre.MAX_REPEAT))
    total = 0
    for op, av in items:
        if op in repeats:
            lo, hi, sub = av
            copies = lo + 1 if hi == sre.MAXREPEAT else max(hi, 1)
            total += copies * _count_positions(sub, sre)
        elif op == sre.SUBPATTERN:
            total += _count_positions(av[-1], sre)
        elif op == sre.BRANCH:
            total += sum(_count_positions(b, sre) for b in av[1])
        elif op in (sre.ASSERT, sre.ASSERT_NOT, sre.AT):
            continue
        else:
            total += 1
    return total


# ---- token spellings --------------------------------------------------------------------------

def _byte_level_decoder() -> dict[str, int]:
    """Inverse of GPT-2's byte -> printable-character map used by byte-level BPE vocabularies:
    printable Latin-1 bytes stand for themselves, the other bytes map to chr(256 + i) in order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    decoder = {chr(b): b for b in printable}
    others = [b for b in range(256) if b not in decoder.values()]
    decoder.update({chr(256 + i): b for i, b in enumerate(others)})
    return decoder


_SP_BYTE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _vocab_style(tokenizer: Any, vocab: dict[str, int]) -> str:
    decoder = repr(getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", ""))
    if "ByteLevel" in decoder:
        return "byte_level"
    sample = "".join(list(vocab)[:2000])
    if "ByteFallback" in decoder or "Metaspace" in decoder or "\u2581" in sample:
        return "sentencepiece"
    return "byte_level" if "\u0120" in sample else "raw"


def token_bytes_table(tokenizer: Any, vocab_size: int) -> list[bytes]:
    """The bytes each token id stands for in generated text; b"" for special tokens and ids
    the tokenizer lacks (mask padding)."""
    vocab = tokenizer.get_vocab()
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    special = set(tokenizer.all_special_ids) | {i for i, t in added.items() if t.special}
    style = _vocab_style(tokenizer, vocab)
    byte_decoder = _byte_level_decoder()
    table = [b""] * vocab_size
    for piece, token_id in vocab.items():
        if token_id >= vocab_size or token_id in special:
            continue
        if token_id in added:
            table[token_id] = added[token_id].content.encode()
        elif style == "byte_level":
            table[token_id] = bytes(byte_decoder.get(c, ord(c) & 0xFF) for c in piece)
        elif style == "sentencepiece":
            m = _SP_BYTE.fullmatch(piece)
            table[token_id] = (bytes([int(m.group(1), 16)]) if m
                               else piece.replace("\u2581", " ").encode())
        else:
            table[token_id] = piece.encode()
    return table
