"""The executor of one program stream.

Each `StreamExecutor` owns a worker thread and a queue: appending to a state enqueues an
expression and returns at once, so fork branches (one executor each) and batch programs run
concurrently and the runtime can batch their requests. Expressions are dispatched by type
through `_HANDLERS`. An error stops the stream: every pending variable is released and the
error is re-raised by `sync()` and by reads of the state, so nothing waits forever."""
from __future__ import annotations

import queue
import threading
import uuid
from collections.abc import Callable
from typing import Any

from sgl.lang.ir import (
    SglCommitLazy,
    SglConstantText,
    SglExpr,
    SglExprList,
    SglFork,
    SglGen,
    SglGetForkItem,
    SglJoin,
    SglRoleBegin,
    SglRoleEnd,
    SglSamplingParams,
    SglSelect,
    SglSeparateReasoning,
    SglVariable,
    SglVarScopeBegin,
    SglVarScopeEnd,
    as_expr,
)
from sgl.lang.spec_exec import make_speculator


class ProgramError(RuntimeError):
    """Raised where a stream's error surfaces, chained to the original exception."""


class StreamExecutor:
    def __init__(self, backend: Any, arguments: dict[str, Any], default_sampling_para: SglSamplingParams,
                 chat_template: Any = None, stream: bool = False,
                 num_api_spec_tokens: int | None = None) -> None:
        self.sid = uuid.uuid4().hex
        self.backend = backend
        self.arguments = arguments
        self.default_sampling_para = default_sampling_para
        self.stream = stream
        self.speculator = make_speculator(num_api_spec_tokens, backend, stream)  # see spec_exec.py
        self._init_state(chat_template)
        self._init_events()
        self._init_worker()

    def _init_state(self, chat_template: Any) -> None:
        self.text_ = ""
        self.messages_: list[dict[str, Any]] = []
        self.variables: dict[str, Any] = {}
        self.meta_info: dict[str, Any] = {}
        self.chat_template = chat_template or self.backend.get_chat_template()
        self.cur_role: str | None = None
        self.cur_role_begin_pos = 0
        self.fork_start_text_pos = 0
        self.scope_starts: dict[str, int] = {}  # var_scope name -> text position
        self.cached_text_len = 0  # how much of text_ the backend has already seen
        self.error_: BaseException | None = None
        self.is_finished = False
        # A streamed run's program function runs on this thread while the caller reads the
        # state; it may not have appended everything yet (see ProgramState.sync).
        self.body_thread: threading.Thread | None = None

    def _init_events(self) -> None:
        self.variable_event: dict[str, threading.Event] = {}
        self.stream_var_event: dict[str, threading.Event] = {}
        self.ready_vars: set[str] = set()
        self.stream_text_event = threading.Event()

    def _init_worker(self) -> None:
        self.queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._end_sent = False
        self.worker = threading.Thread(target=self._worker_loop, daemon=True, name=f"sgl-{self.sid[:6]}")
        self.worker.start()

    # --- public surface used by ProgramState ---------------------------------------------------

    def submit(self, expr: Any) -> None:
        expr = as_expr(expr)
        with self._lock:  # never enqueue behind a worker that has exited
            if self.is_finished or self._end_sent:
                self.check_error()
                raise ProgramError("cannot append to a program that has ended")
            self._init_var_events(expr)
            self.queue.put(expr)

    def sync(self) -> None:
        self.queue.join()

    def check_error(self) -> None:
        if self.error_ is not None:
            raise ProgramError(f"{type(self.error_).__name__}: {self.error_}") from self.error_

    def get_var(self, name: str) -> Any:
        if name in self.variable_event:
            self.variable_event[name].wait()
            if name not in self.ready_vars:  # released by an error, not produced
                self.check_error()
        if name not in self.variables:
            self.check_error()
            raise KeyError(f"no variable {name!r} in this program")
        return self.variables[name]

    def set_var(self, name: str, value: Any) -> None:
        self.variables[name] = value

    def get_meta_info(self, name: str) -> Any:
        if name in self.variable_event:
            self.variable_event[name].wait()
        return self.meta_info.get(name)

    def end(self) -> None:
        """No more expressions: the worker exits once the queue is drained."""
        with self._lock:
            if not self.is_finished and not self._end_sent:
                self._end_sent = True
                self.queue.put(None)

    def fork(self, size: int) -> list[StreamExecutor]:
        if size > 1:  # branches share the prefix: have the backend cache it once, first
            self.submit(SglCommitLazy())
        self.sync()
        self.check_error()
        children = [StreamExecutor(self.backend, self.arguments, self.default_sampling_para,
                                   self.chat_template, self.stream) for _ in range(int(size))]
        for child in children:
            self.seed(child)
        return children

    def seed(self, child: StreamExecutor) -> None:
        """Start `child` from this stream's current state (a fork)."""
        child.text_ = self.text_
        child.messages_ = list(self.messages_)
        child.variables = dict(self.variables)
        child.meta_info = dict(self.meta_info)
        child.cur_role, child.cur_role_begin_pos = self.cur_role, self.cur_role_begin_pos
        child.fork_start_text_pos = len(self.text_)
        child.cached_text_len = self.cached_text_len

    # --- worker ---------------------------------------------------------------------------------

    def _worker_loop(self) -> None:
        while True:
            expr = self.queue.get()
            if expr is None:
                self.queue.task_done()
                break
            try:
                self._execute(expr)
            except BaseException as e:  # noqa: BLE001 - reported through sync()/error()
                self.error_ = e
                self.queue.task_done()
                break
            self.queue.task_done()
            self.stream_text_event.set()
        with self._lock:
            self.is_finished = True
            self._drain()
        self._release_all()

    def _drain(self) -> None:
        while True:
            try:
                self.queue.get_nowait()
            except queue.Empty:
                return
            self.queue.task_done()

    def _release_all(self) -> None:
        for event in list(self.variable_event.values()) + list(self.stream_var_event.values()):
            event.set()
        self.stream_text_event.set()

    def _execute(self, expr: SglExpr) -> None:
        handler = _HANDLERS.get(type(expr))
        if handler is None:
            raise TypeError(f"the interpreter cannot execute {type(expr).__name__}")
        if self.speculator is None or isinstance(expr, SglExprList):
            return handler(self, expr)
        start = len(self.text_)
        handler(self, expr)
        self.speculator.advance(self.text_[start:])  # all appended text is checked, gens' too

    def _init_var_events(self, expr: SglExpr) -> None:
        if isinstance(expr, SglExprList):
            for e in expr.expr_list:
                self._init_var_events(e)
        elif isinstance(expr, (SglGen, SglSelect, SglVarScopeBegin)) and expr.name is not None:
            self.variable_event[expr.name] = threading.Event()
            self.stream_var_event[expr.name] = threading.Event()
        elif isinstance(expr, SglSeparateReasoning):
            for name in expr.gen_names:
                self.variable_event[expr.reasoning_name(name)] = threading.Event()
                self.stream_var_event[expr.reasoning_name(name)] = threading.Event()

    def _mark_var_ready(self, name: str) -> None:
        self.ready_vars.add(name)
        self.variable_event[name].set()
        self.stream_var_event[name].set()
        self.stream_text_event.set()

    # --- handlers -------------------------------------------------------------------------------

    def _execute_list(self, expr: SglExprList) -> None:
        for e in expr.expr_list:
            self._execute(e)

    def _execute_fill(self, expr: SglConstantText) -> None:
        self.text_ += str(expr.value)

    def _execute_gen(self, expr: SglGen) -> None:
        params = self._resolve_sampling_params(expr.sampling_params)
        name = expr.name
        if self.stream:
            return self._execute_gen_stream(name, params)
        if self.speculator is not None and self.speculator.can_serve(params):
            comp, meta_info = self.speculator.gen(self, params)
        else:
            comp, meta_info = self.backend.generate(self, sampling_params=params)
        self.cached_text_len = len(self.text_)
        self.text_ += comp[0] if isinstance(comp, list) else comp
        if name is not None:
            self.variables[name], self.meta_info[name] = comp, meta_info
            self._mark_var_ready(name)

    def _execute_gen_stream(self, name: str | None, params: SglSamplingParams) -> None:
        chunks = self.backend.generate_stream(self, sampling_params=params)
        self.cached_text_len = len(self.text_)
        if name is not None:
            self.variables[name] = ""
        for delta, meta_info in chunks:
            self.text_ += delta
            if name is not None:
                self.variables[name] += delta
                self.meta_info[name] = meta_info
                self.stream_var_event[name].set()
            self.stream_text_event.set()
        if name is not None:
            self._mark_var_ready(name)

    def _execute_select(self, expr: SglSelect) -> None:
        decision = self.backend.select(self, expr.choices, expr.temperature, expr.choices_method)
        self.cached_text_len = len(self.text_)
        self.text_ += decision.decision
        if expr.name is not None:
            self.variables[expr.name] = decision.decision
            self.meta_info[expr.name] = decision.meta_info
            self._mark_var_ready(expr.name)

    def _execute_role_begin(self, expr: SglRoleBegin) -> None:
        if self.cur_role is not None:
            raise ValueError(f"role {expr.role!r} begins inside role {self.cur_role!r}; roles do not nest")
        default_system = self.chat_template.default_system_prompt
        if not self.messages_ and expr.role != "system" and default_system:
            self._execute_role_begin(SglRoleBegin("system"))
            self.text_ += default_system
            self._execute_role_end(SglRoleEnd("system"))
        prefix, _ = self.chat_template.get_prefix_and_suffix(expr.role, self.messages_)
        self.cur_role = expr.role
        self.text_ += prefix
        self.cur_role_begin_pos = len(self.text_)

    def _execute_role_end(self, expr: SglRoleEnd) -> None:
        if self.cur_role != expr.role:
            raise ValueError(f"role {expr.role!r} ends but the open role is {self.cur_role!r}")
        content = self.text_[self.cur_role_begin_pos:].lstrip()
        _, suffix = self.chat_template.get_prefix_and_suffix(expr.role, self.messages_)
        self.text_ += suffix
        self.messages_.append({"role": expr.role, "content": content})
        self.cur_role = None

    def _execute_var_scope_begin(self, expr: SglVarScopeBegin) -> None:
        self.scope_starts[expr.name] = len(self.text_)

    def _execute_var_scope_end(self, expr: SglVarScopeEnd) -> None:
        start = self.scope_starts.pop(expr.name, None)
        if start is None:
            raise ValueError(f"var_scope {expr.name!r} ends without a beginning")
        self.variables[expr.name] = self.text_[start:]
        self._mark_var_ready(expr.name)

    def _execute_variable(self, expr: SglVariable) -> None:
        self.text_ += str(expr.source_stream_executor.get_var(expr.name))

    def _execute_commit_lazy(self, expr: SglCommitLazy) -> None:
        if 0 < len(self.text_) and self.cached_text_len < len(self.text_):
            self.backend.commit_lazy_operations(self)
            self.cached_text_len = len(self.text_)

    def _execute_fork(self, expr: SglFork) -> None:
        self._execute_commit_lazy(SglCommitLazy())
        for child, gate in expr.children:
            self.seed(child)
            gate.set()

    def _execute_get_fork_item(self, expr: SglGetForkItem) -> None:
        expr.gate.wait()

    def _execute_join(self, expr: SglJoin) -> None:
        for branch in expr.branches:
            branch.sync()
            branch.check_error()
        if expr.mode == "gather_variable":
            gather_variables(self, expr.branches)
        elif expr.mode == "concate_and_append":
            self.text_ += "".join(b.text_[b.fork_start_text_pos:] for b in expr.branches)
        else:
            raise ValueError(f"join mode must be 'gather_variable' or 'concate_and_append', got {expr.mode!r}")

    def _execute_separate_reasoning(self, expr: SglSeparateReasoning) -> None:
        """The gens already ran: split each one's text, and keep only the answer in the
        program's text too (the reasoning was its tail's first part)."""
        from sgl.runtime.reasoning_parser import ReasoningParser
        for name in expr.gen_names:
            text = self.variables[name]
            texts = text if isinstance(text, list) else [text]  # n > 1: every sample
            pairs = [ReasoningParser(expr.model_type).parse_non_stream(t) for t in texts]
            if self.text_.endswith(texts[0]):
                self.text_ = self.text_[:len(self.text_) - len(texts[0])] + pairs[0][1]
            reasoning, answer = ([p[0] for p in pairs], [p[1] for p in pairs]) if isinstance(
                text, list) else pairs[0]
            self.variables[name] = answer
            self.variables[expr.reasoning_name(name)] = reasoning
            self.meta_info[expr.reasoning_name(name)] = self.meta_info.get(name)
            self._mark_var_ready(expr.reasoning_name(name))

    def _resolve_sampling_params(self, params: SglSamplingParams) -> SglSamplingParams:
        merged = self.default_sampling_para.merged(params)
        for s in self.chat_template.stop_str:
            if s not in merged.stop:
                merged.stop.append(s)
        return merged


def gather_variables(parent: StreamExecutor, branches: list[StreamExecutor]) -> None:
    """Each variable a branch created after the fork becomes a list on the parent."""
    before = set(parent.variables)
    for branch in branches:
        for name in branch.variables:
            if name in before:
                continue
            parent.variables.setdefault(name, []).append(branch.variables[name])
            parent.meta_info.setdefault(name, []).append(branch.meta_info.get(name))


_HANDLERS: dict[type, Callable[[StreamExecutor, Any], None]] = {
    SglExprList: StreamExecutor._execute_list,
    SglConstantText: StreamExecutor._execute_fill,
    SglGen: StreamExecutor._execute_gen,
    SglSelect: StreamExecutor._execute_select,
    SglRoleBegin: StreamExecutor._execute_role_begin,
    SglRoleEnd: StreamExecutor._execute_role_end,
    SglVarScopeBegin: StreamExecutor._execute_var_scope_begin,
    SglVarScopeEnd: StreamExecutor._execute_var_scope_end,
    SglVariable: StreamExecutor._execute_variable,
    SglCommitLazy: StreamExecutor._execute_commit_lazy,
    SglFork: StreamExecutor._execute_fork,
    SglGetForkItem: StreamExecutor._execute_get_fork_item,
    SglJoin: StreamExecutor._execute_join,
    SglSeparateReasoning: StreamExecutor._execute_separate_reasoning,
}
