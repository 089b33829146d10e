"""Grammars that force tool calls (tool_choice "required" or a named function): the output
must be one or more calls, in the parser's own format, each naming one of the allowed tools
with arguments valid under that tool's parameters schema.

xgrammar: a structural tag, `prefix item (separator item)* suffix`, where an item is an `or`
over the tools of `const("<item_begin>{"name": "<tool>", "arguments": ") + arguments + const("}
<item_end>")`. The arguments are the tool's schema compiled to compact JSON (xgrammar's
`any_whitespace=False` EBNF, embedded as a `grammar` element): no free whitespace to loop on,
and the keys are forced (jump-forward skips them), as with response_format json_schema.
outlines-core: the same shape as one regex, with each schema turned into a regex.
"""
from __future__ import annotations

import json
import re
from typing import Any

from sgl.runtime.server.tools.parsers import ToolCallParser

ANY_ARGUMENTS = {"type": "object"}


def arguments_schema(parameters: Any) -> Any:
    """A tool's `parameters`, or any JSON object when it has none."""
    return parameters if parameters else ANY_ARGUMENTS


def tool_call_constraint(parser: ToolCallParser, tools: dict[str, Any], single: bool,
                         backend: str) -> tuple[str, str]:
    """(sampling-params field, grammar text) forcing calls of `tools` (name -> parameters
    schema); `single`: exactly one call."""
    if backend == "xgrammar":
        return "structural_tag", json.dumps(_structural_tag(parser, tools, single))
    if backend == "outlines":
        return "regex", _regex(parser, tools, single)
    raise ValueError("tool_choice 'required' or a named function needs a grammar backend; "
                     "the server runs with --grammar-backend none")


# ---- xgrammar ---------------------------------------------------------------------------------

def _structural_tag(parser: ToolCallParser, tools: dict[str, Any], single: bool) -> dict:
    item = {"type": "or", "elements": [_item(parser, name, schema)
                                       for name, schema in tools.items()]}
    elements = [_const(parser.prefix), item]
    if not single:
        more = {"type": "sequence", "elements": [_const(parser.separator), item]}
        elements.append({"type": "star", "content": more})
    elements.append(_const(parser.suffix))
    elements = [e for e in elements if e is not None]
    return {"type": "structural_tag", "format": {"type": "sequence", "elements": elements}}


def _item(parser: ToolCallParser, name: str, schema: Any) -> dict:
    head = _const(parser.item_begin + parser.call_head(name))
    tail = _const("}" + parser.item_end)
    return {"type": "sequence", "elements": [head, _compact_json(schema), tail]}


def _const(text: str) -> Any:
    return {"type": "const_string", "value": text} if text else None


def _compact_json(schema: Any) -> dict:
    import xgrammar as xgr

    from sgl.runtime.grammar.base import rewrite_schema
    from sgl.runtime.grammar.xgrammar_backend import _length_pattern  # the same fix-up
    schema = rewrite_schema(schema, _length_pattern)
    ebnf = str(xgr.Grammar.from_json_schema(json.dumps(schema), any_whitespace=False))
    return {"type": "grammar", "grammar": ebnf}


# ---- outlines-core ----------------------------------------------------------------------------

def _regex(parser: ToolCallParser, tools: dict[str, Any], single: bool) -> str:
    items = [re.escape(parser.item_begin + parser.call_head(name)) + _schema_regex(schema)
             + re.escape("}" + parser.item_end) for name, schema in tools.items()]
    item = "(" + "|".join(items) + ")"
    more = "" if single else f"({re.escape(parser.separator)}{item})*"
    return re.escape(parser.prefix) + item + more + re.escape(parser.suffix)


def _schema_regex(schema: Any) -> str:
    import uuid

    from outlines_core.json_schema import build_regex_from_schema

    from sgl.runtime.grammar.outlines_backend import _bounded_numbers_to_placeholders
    ranges: dict[str, str] = {}
    schema = _bounded_numbers_to_placeholders(schema, ranges, uuid.uuid4().hex[:12])
    regex = build_regex_from_schema(json.dumps(schema), "")
    for placeholder, sub in ranges.items():
        regex = regex.replace(json.dumps(placeholder), sub)
    return regex
