"""Function calling on the chat route: tool-call formats and their parsers, the grammars that
force calls, the request plan, the fallback tools prompt, and streaming of calls."""
from sgl.runtime.server.tools.constrain import arguments_schema, tool_call_constraint
from sgl.runtime.server.tools.parsers import (
    PARSERS,
    ParseResult,
    ToolCall,
    ToolCallParser,
    default_parser_name,
    parser_class,
)
from sgl.runtime.server.tools.plan import ToolPlan, plan_tools
from sgl.runtime.server.tools.prompt import (
    calls_as_text,
    parse_arguments,
    render_with_tools,
    template_messages,
)
from sgl.runtime.server.tools.stream import ToolStream

__all__ = [
    "PARSERS", "ParseResult", "ToolCall", "ToolCallParser", "ToolPlan", "ToolStream",
    "arguments_schema", "calls_as_text", "default_parser_name", "parse_arguments",
    "parser_class", "plan_tools", "render_with_tools", "template_messages",
    "tool_call_constraint",
]
