"""Expression nodes of the language and the sampling parameters they carry.

A program appends expressions to a state (`s += "text" + gen("x")`); the interpreter executes
them, the tracer records them into a graph. Nodes are plain objects: behaviour lives in the
interpreter's dispatch table, not here."""
from __future__ import annotations

import dataclasses
import itertools
from typing import Any

# Regexes that constrain `gen(dtype=...)`; the value stays a string, as in SGLang.
REGEX_INT = r"[-+]?[0-9]+"
REGEX_FLOAT = r"[-+]?[0-9]*\.?[0-9]+"
REGEX_BOOL = r"(True|False)"
# A JSON string literal (RFC 8259): no raw control characters, only JSON's escapes, so the
# value can be pasted into JSON (`gen_string` inside a JSON program) and json.loads accepts it.
REGEX_STR = r'"([^"\\\x00-\x1f]|\\(["\\/bfnrt]|u[0-9a-fA-F]{4}))*"'

_DTYPE_REGEX = {int: REGEX_INT, "int": REGEX_INT, float: REGEX_FLOAT, "float": REGEX_FLOAT,
                bool: REGEX_BOOL, "bool": REGEX_BOOL, str: REGEX_STR, "str": REGEX_STR}


def dtype_to_regex(dtype: Any) -> str:
    if dtype not in _DTYPE_REGEX:
        raise ValueError(f"gen(dtype=...) must be one of int, float, bool, str; got {dtype!r}")
    return _DTYPE_REGEX[dtype]


@dataclasses.dataclass
class SglSamplingParams:
    """Sampling parameters in the frontend's vocabulary. `None` means "not set here": a gen's
    params override the program's defaults field by field (see `merged`)."""
    max_new_tokens: int | None = None
    min_new_tokens: int | None = None
    n: int | None = None
    stop: str | list[str] | None = None
    stop_regex: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    ignore_eos: bool | None = None
    return_logprob: bool | None = None
    logprob_start_len: int | None = None
    top_logprobs_num: int | None = None
    return_text_in_logprobs: bool | None = None
    dtype: Any = None
    regex: str | None = None
    json_schema: str | None = None

    def merged(self, override: SglSamplingParams) -> SglSamplingParams:
        out = dataclasses.replace(self)
        for f in dataclasses.fields(self):
            value = getattr(override, f.name)
            if value is not None:
                setattr(out, f.name, value)
        out.stop = list(_as_list(out.stop))
        return out

    def resolved_regex(self) -> str | None:
        return dtype_to_regex(self.dtype) if self.dtype is not None else self.regex

    def to_srt_kwargs(self) -> dict[str, Any]:
        """`sampling_params` of SGLang's native /generate (and of `Engine.generate`)."""
        keys = ("max_new_tokens", "min_new_tokens", "n", "stop_token_ids", "temperature", "top_p",
                "top_k", "min_p", "frequency_penalty", "presence_penalty", "ignore_eos", "json_schema")
        out = {k: getattr(self, k) for k in keys if getattr(self, k) is not None}
        out["stop"] = list(_as_list(self.stop))
        if self.stop_regex:
            out["stop_regex"] = list(_as_list(self.stop_regex))
        if self.dtype in (int, "int", float, "float"):
            out["stop"] += [" ", "\n"]  # a number ends at whitespace
        regex = self.resolved_regex()
        if regex is not None:
            out["regex"] = regex
        if out.get("stop_token_ids") is not None:
            out["stop_token_ids"] = list(out["stop_token_ids"])
        return out

    def logprob_kwargs(self) -> dict[str, Any]:
        keys = ("return_logprob", "logprob_start_len", "top_logprobs_num", "return_text_in_logprobs")
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}


def _as_list(stop: Any) -> list[str]:
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else list(stop)


class SglExpr:
    """Base of all nodes. `prev_node`/`pid` are filled in by the tracer only."""
    _ids = itertools.count()

    def __init__(self) -> None:
        self.node_id = next(SglExpr._ids)
        self.prev_node: SglExpr | None = None
        self.pid: int | None = None

    def __add__(self, other: Any) -> SglExprList:
        return SglExprList(_flat(self) + _flat(as_expr(other)))

    def __radd__(self, other: Any) -> SglExprList:
        return SglExprList(_flat(as_expr(other)) + _flat(self))


def as_expr(x: Any) -> SglExpr:
    if isinstance(x, SglExpr):
        return x
    if isinstance(x, str):
        return SglConstantText(x)
    raise TypeError(f"cannot append {type(x).__name__} to a program state; use a str or an sgl expression")


def _flat(x: SglExpr) -> list[SglExpr]:
    return list(x.expr_list) if isinstance(x, SglExprList) else [x]


class SglExprList(SglExpr):
    def __init__(self, expr_list: list[Any]) -> None:
        super().__init__()
        self.expr_list = [as_expr(e) for e in expr_list]

    def __repr__(self) -> str:
        return f"ExprList({self.expr_list})"


class SglConstantText(SglExpr):
    def __init__(self, value: str) -> None:
        super().__init__()
        self.value = value

    def __repr__(self) -> str:
        return f"Constant({self.value!r})"


class SglArgument(SglExpr):
    """A function argument left unbound while tracing."""

    def __init__(self, name: str, value: Any = None) -> None:
        super().__init__()
        self.name = name
        self.value = value

    def __format__(self, spec: str) -> str:
        raise TypeError("an unbound argument cannot go inside an f-string while tracing; "
                        "use `+` to join text and arguments")

    def __repr__(self) -> str:
        return f"Argument({self.name})"


class SglGen(SglExpr):
    def __init__(self, name: str | None, sampling_params: SglSamplingParams) -> None:
        super().__init__()
        self.name = name
        self.sampling_params = sampling_params

    def __repr__(self) -> str:
        return f"Gen({self.name!r})"


class SglSelect(SglExpr):
    def __init__(self, name: str | None, choices: list[str], temperature: float,
                 choices_method: Any) -> None:
        super().__init__()
        self.name = name
        self.choices = list(choices)
        self.temperature = temperature
        self.choices_method = choices_method

    def __repr__(self) -> str:
        return f"Select({self.name!r}, choices={self.choices})"


class SglSeparateReasoning(SglExpr):
    """Split the reasoning out of the gens in `expr` (SGLang's `separate_reasoning`): each
    gen variable `x` keeps the answer and `x_reasoning_content` receives the reasoning."""

    def __init__(self, model_type: str, expr: SglExpr) -> None:
        super().__init__()
        self.model_type = model_type
        self.gen_names = [e.name for e in _flat(expr) if isinstance(e, (SglGen, SglSelect))
                          and e.name is not None]
        if not self.gen_names:
            raise ValueError("separate_reasoning needs a named gen (or a list holding one)")

    @staticmethod
    def reasoning_name(name: str) -> str:
        return f"{name}_reasoning_content"

    def __repr__(self) -> str:
        return f"SeparateReasoning({self.model_type}, {self.gen_names})"


class SglRoleBegin(SglExpr):
    def __init__(self, role: str) -> None:
        super().__init__()
        self.role = role

    def __repr__(self) -> str:
        return f"RoleBegin({self.role})"


class SglRoleEnd(SglExpr):
    def __init__(self, role: str) -> None:
        super().__init__()
        self.role = role

    def __repr__(self) -> str:
        return f"RoleEnd({self.role})"


class SglVarScopeBegin(SglExpr):
    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def __repr__(self) -> str:
        return f"VarScopeBegin({self.name})"


class SglVarScopeEnd(SglExpr):
    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def __repr__(self) -> str:
        return f"VarScopeEnd({self.name})"


class SglVariable(SglExpr):
    """The value of variable `name` of another stream; `source` is the node that produces it
    (tracing) and `source_stream_executor` the executor to read it from (running)."""

    def __init__(self, name: str, source: SglExpr | None = None, source_stream_executor: Any = None) -> None:
        super().__init__()
        self.name = name
        self.source = source
        self.source_stream_executor = source_stream_executor

    def __repr__(self) -> str:
        return f"Variable({self.name})"


class SglCommitLazy(SglExpr):
    """Send the text so far to the backend so its prefix is cached (before a fork)."""

    def __repr__(self) -> str:
        return "CommitLazy()"


class SglFork(SglExpr):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size
        self.children: list[Any] = []  # executors to seed, set per run by the compiler

    def __repr__(self) -> str:
        return f"Fork({self.size})"


class SglGetForkItem(SglExpr):
    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index
        self.gate: Any = None  # per-run seeding event, set by the compiler

    def __repr__(self) -> str:
        return f"GetForkItem({self.index})"


class SglJoin(SglExpr):
    """Join of fork branches back into the parent stream: "gather_variable" collects each
    branch's new variables into lists; "concate_and_append" appends the text each branch added
    since the fork."""

    def __init__(self, mode: str, sources: list[SglExpr]) -> None:
        super().__init__()
        self.mode = mode
        self.sources = sources  # last node of each branch (tracing)
        self.branches: list[Any] = []  # executors of each branch (running)

    def __repr__(self) -> str:
        return f"Join({self.mode}, {len(self.sources)} branches)"
