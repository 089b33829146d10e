"""Structured generation: grammar backends (xgrammar, outlines-core), compile manager,
jump-forward. The scheduler's whole surface is listed below; see base.py for the contract."""
from .base import (
    ANY_JSON_OBJECT,
    Grammar,
    GrammarBackend,
    allocate_token_bitmask,
    apply_token_bitmask,
    bitmask_to_bool,
    common_prefix_len,
    create_grammar_backend,
    validate,
)
from .jump_forward import retokenize_with_jump
from .manager import GrammarHandle, GrammarManager

__all__ = ["ANY_JSON_OBJECT", "Grammar", "GrammarBackend", "GrammarHandle", "GrammarManager",
           "allocate_token_bitmask", "apply_token_bitmask", "bitmask_to_bool",
           "common_prefix_len", "create_grammar_backend", "retokenize_with_jump", "validate"]
