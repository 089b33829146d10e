"""What a chat request's `tools` / `tool_choice` / `parallel_tool_calls` mean for this request:
which parser reads the output, which tools go into the prompt, and which grammar (if any)
forces calls. Bad combinations are 400s naming the field."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from sgl.runtime.grammar.base import backend_error_message
from sgl.runtime.server.errors import ApiError
from sgl.runtime.server.tools.constrain import arguments_schema, tool_call_constraint
from sgl.runtime.server.tools.parsers import ToolCallParser

GRAMMAR_FIELDS = ("regex", "json_schema", "ebnf", "structural_tag")


@dataclass
class ToolPlan:
    parser: ToolCallParser
    offered: list[dict[str, Any]]                  # OpenAI tool dicts, for the prompt
    constraint: Optional[tuple[str, str]] = None   # (sampling-params field, grammar text)

    def apply(self, sampling: dict[str, Any]) -> None:
        """Add the forcing grammar to a request's sampling params."""
        if self.constraint is None:
            return
        taken = [k for k in GRAMMAR_FIELDS if k in sampling]
        if taken:
            raise ApiError(f"tool_choice 'required' or a named function forces the output, so "
                           f"it cannot be combined with {taken[0]} / response_format",
                           param="tool_choice")
        field, text = self.constraint
        sampling[field] = text


def plan_tools(req: Any, parser_cls: type[ToolCallParser], backend: str) -> Optional[ToolPlan]:
    """None when no tool is in play (no tools, or tool_choice "none": tools are ignored)."""
    choice = req.tool_choice or ("auto" if req.tools else "none")
    if choice == "none" or (choice == "auto" and not req.tools):
        return None
    if not req.tools:
        raise ApiError("tool_choice 'required' or a named function needs a non-empty `tools` "
                       "list", param="tool_choice")
    schemas = {t.function.name: arguments_schema(t.function.parameters) for t in req.tools}
    parser = parser_cls(schemas)
    offered = [t.model_dump(exclude_none=True) for t in req.tools]
    if choice == "auto":
        return ToolPlan(parser, offered)
    single = not req.parallel_tool_calls
    if not isinstance(choice, str):  # a named function: exactly one call of it
        name = choice.function.name
        if name not in schemas:
            raise ApiError(f"tool_choice names function {name!r}, which is not in tools "
                           f"({', '.join(schemas)})", param="tool_choice")
        schemas, single = {name: schemas[name]}, True
    try:
        constraint = tool_call_constraint(parser, schemas, single, backend)
    except ValueError as e:
        raise ApiError(str(e), param="tool_choice") from None
    except (RuntimeError, TypeError) as e:  # xgrammar refused a parameters schema
        raise ApiError(f"tools: a parameters schema cannot be compiled: "
                       f"{backend_error_message(e)}", param="tools") from None
    return ToolPlan(parser, offered, constraint)
