"""Tracing: run a program on placeholder arguments and record its expressions as a graph.

Every state (the program's, each fork branch, each nested program) is one stream with its own
`pid`; a node points to the previous node of its stream (`prev_node`), a variable read to the
node that produces it (`source`), a fork branch's first node to the fork. The tracer also
simulates the text of the program's constant start, which `run_batch` precaches."""
from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sgl.lang.backends.base import BaseBackend, resolve_backend
from sgl.lang.global_config import global_config
from sgl.lang.ir import (
    SglArgument,
    SglConstantText,
    SglExpr,
    SglExprList,
    SglFork,
    SglGen,
    SglGetForkItem,
    SglJoin,
    SglRoleBegin,
    SglRoleEnd,
    SglSelect,
    SglVariable,
    SglVarScopeBegin,
    SglVarScopeEnd,
    as_expr,
)


class StopTracing(Exception):
    pass


class TracingScope:
    """While a program is traced, nested sgl functions are traced too (not run)."""
    cur_scope: TracingScope | None = None

    def __init__(self, tracer_state: TracerProgramState) -> None:
        self.tracer_state = tracer_state
        self.last_scope: TracingScope | None = None

    def __enter__(self) -> TracingScope:
        self.last_scope, TracingScope.cur_scope = TracingScope.cur_scope, self
        return self

    def __exit__(self, *exc: object) -> None:
        TracingScope.cur_scope = self.last_scope

    @staticmethod
    def get_current_scope() -> TracingScope | None:
        return TracingScope.cur_scope


class TraceSession:
    """Shared by every stream of one trace: hands out stream ids and keeps all streams."""

    def __init__(self) -> None:
        self.states: list[TracerProgramState] = []

    def register(self, state: TracerProgramState) -> int:
        self.states.append(state)
        return len(self.states) - 1


def _backend_or_dummy(backend: Any) -> BaseBackend:
    backend = backend if backend is not None else global_config.default_backend
    return resolve_backend(backend) if backend is not None else BaseBackend()


def trace_program(program: Any, arguments: dict[str, Any], backend: Any) -> TracerProgramState:
    args = {name: SglArgument(name) for name in program.arg_names if name not in arguments}
    args.update(arguments)
    args.update(program.bind_arguments)
    scope = TracingScope.get_current_scope()
    session = scope.tracer_state.session if scope else TraceSession()
    tracer = TracerProgramState(_backend_or_dummy(backend), args, only_trace_prefix=False, session=session)
    with TracingScope(tracer):
        tracer.ret_value = program.func(tracer, **args)
    return tracer


def extract_prefix_by_tracing(program: Any, backend: Any) -> str:
    args = {name: SglArgument(name) for name in program.arg_names}
    args.update(program.bind_arguments)
    tracer = TracerProgramState(_backend_or_dummy(backend), args, only_trace_prefix=True)
    try:
        with TracingScope(tracer):
            program.func(tracer, **args)
    except Exception:  # StopTracing, or user code touching a placeholder argument
        pass
    return tracer.prefix_text


class TracerProgramState:
    def __init__(self, backend: BaseBackend, arguments: dict[str, Any], only_trace_prefix: bool,
                 session: TraceSession | None = None) -> None:
        self.session = session if session is not None else TraceSession()
        self.pid = self.session.register(self)
        self.backend = backend
        self.arguments = arguments
        self.only_trace_prefix = only_trace_prefix
        self.chat_template = backend.get_chat_template()
        self.nodes: list[SglExpr] = []
        self.last_node: SglExpr | None = None
        self.variables: dict[str, SglVariable] = {}
        self.messages_: list[dict[str, str]] = []
        self.cur_role: str | None = None
        self.prefix_text = ""
        self.prefix_open = True  # still inside the constant start
        self.ret_value: Any = None

    # --- recording ------------------------------------------------------------------------------

    def __iadd__(self, other: Any) -> TracerProgramState:
        if other is None:
            raise ValueError("tried to append None to a program state")
        self._record(as_expr(other))
        return self

    def _record(self, expr: SglExpr) -> None:
        if isinstance(expr, SglExprList):
            for e in expr.expr_list:
                self._record(e)
            return
        if isinstance(expr, SglArgument) and expr.value is not None:
            expr = SglConstantText(str(expr.value))
        if expr.pid is not None:  # the same node appended twice (e.g. to every fork branch)
            expr = copy.copy(expr)
            expr.node_id = next(SglExpr._ids)
        self._simulate_text(expr)
        if isinstance(expr, (SglGen, SglSelect)):
            if expr.name is None:
                expr.name = f"{type(expr).__name__[3:].lower()}_{len(self.variables)}"
            self.variables[expr.name] = SglVariable(expr.name, source=expr)
        self._append_node(expr)

    def _append_node(self, expr: SglExpr) -> None:
        expr.pid = self.pid
        expr.prev_node = self.last_node
        self.last_node = expr
        self.nodes.append(expr)

    def _simulate_text(self, expr: SglExpr) -> None:
        if not self.prefix_open:
            return
        if isinstance(expr, SglConstantText):
            self.prefix_text += expr.value
        elif isinstance(expr, SglRoleBegin):
            self.prefix_text += self._role_begin_text(expr.role)
        elif isinstance(expr, SglRoleEnd):
            self.prefix_text += self.chat_template.get_prefix_and_suffix(expr.role, self.messages_)[1]
            self.messages_.append({"role": expr.role, "content": ""})
            self.cur_role = None
        else:
            self.prefix_open = False
            if self.only_trace_prefix:
                raise StopTracing()

    def _role_begin_text(self, role: str) -> str:
        text, template = "", self.chat_template
        if not self.messages_ and role != "system" and template.default_system_prompt:
            sys_prefix, sys_suffix = template.get_prefix_and_suffix("system", [])
            text += sys_prefix + template.default_system_prompt + sys_suffix
            self.messages_.append({"role": "system", "content": template.default_system_prompt})
        self.cur_role = role
        return text + template.get_prefix_and_suffix(role, self.messages_)[0]

    # --- the ProgramState surface ---------------------------------------------------------------

    def _role_common(self, role: str, expr: Any = None) -> Any:
        if expr is not None:
            self += SglExprList([SglRoleBegin(role), as_expr(expr), SglRoleEnd(role)])
            return None
        return self._role_scope(role)

    @contextmanager
    def _role_scope(self, role: str) -> Iterator[None]:
        self += SglRoleBegin(role)
        yield
        self += SglRoleEnd(role)

    def system(self, expr: Any = None) -> Any:
        return self._role_common("system", expr)

    def user(self, expr: Any = None) -> Any:
        return self._role_common("user", expr)

    def assistant(self, expr: Any = None) -> Any:
        return self._role_common("assistant", expr)

    @contextmanager
    def var_scope(self, name: str) -> Iterator[None]:
        self += SglVarScopeBegin(name)
        yield
        end = SglVarScopeEnd(name)
        self += end
        self.variables[name] = SglVariable(name, source=end)

    def fork(self, size: int = 1) -> TracerStateGroup:
        if self.only_trace_prefix:
            raise StopTracing()
        fork = SglFork(size)
        self._record(fork)
        branches = []
        for i in range(size):
            branch = TracerProgramState(self.backend, self.arguments, False, self.session)
            item = SglGetForkItem(i)
            item.pid, item.prev_node = branch.pid, fork
            branch.nodes, branch.last_node = [item], item
            branch.variables, branch.messages_ = dict(self.variables), list(self.messages_)
            branch.cur_role, branch.prefix_open = self.cur_role, False
            branches.append(branch)
        return TracerStateGroup(branches, self)

    @contextmanager
    def copy(self) -> Iterator[TracerProgramState]:
        group = self.fork(1)
        yield group[0]
        group.join()

    def get_var(self, name: str) -> Any:
        if name in self.arguments and name not in self.variables:
            return self.arguments[name]
        if name not in self.variables:
            raise KeyError(f"no variable {name!r} in the traced program")
        v = self.variables[name]
        return SglVariable(v.name, source=v.source)

    def __getitem__(self, name: str) -> Any:
        return self.get_var(name)

    def __contains__(self, name: str) -> bool:
        return name in self.variables

    def text(self) -> str:
        raise TypeError("text() is not known while tracing")


class TracerStateGroup:
    def __init__(self, states: list[TracerProgramState], src_state: TracerProgramState) -> None:
        self.states = states
        self.src_state = src_state

    def __getitem__(self, i: int) -> TracerProgramState:
        return self.states[i]

    def __setitem__(self, i: int, value: Any) -> None:
        pass  # `forks[i] += x` assigns the same object back

    def __len__(self) -> int:
        return len(self.states)

    def __iter__(self) -> Iterator[TracerProgramState]:
        return iter(self.states)

    def __iadd__(self, other: Any) -> TracerStateGroup:
        if isinstance(other, (list, tuple)):
            items = list(other)
        elif callable(other) and not isinstance(other, SglExpr):
            items = [other(i) for i in range(len(self.states))]
        else:
            items = [other] * len(self.states)
        for state, item in zip(self.states, items):
            state += item
        return self

    def join(self, mode: str = "gather_variable") -> None:
        join = SglJoin(mode, sources=[b.last_node for b in self.states])
        self.src_state._record(join)
        if mode == "gather_variable":
            src = self.src_state
            new = {n for b in self.states for n in b.variables if n not in src.variables}
            for name in sorted(new):
                src.variables[name] = SglVariable(name, source=join)
