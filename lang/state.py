"""What a program function receives as `s` and what `run()` returns."""
from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sgl.lang.interpreter import StreamExecutor
from sgl.lang.ir import (
    SglExpr,
    SglExprList,
    SglJoin,
    SglRoleBegin,
    SglRoleEnd,
    SglVarScopeBegin,
    SglVarScopeEnd,
    as_expr,
)


class ProgramState:
    def __init__(self, stream_executor: StreamExecutor) -> None:
        self.stream_executor = stream_executor
        self.ret_value: Any = None

    # --- building -------------------------------------------------------------------------------

    def __iadd__(self, other: Any) -> ProgramState:
        if other is None:
            raise ValueError("tried to append None to a program state")
        self.stream_executor.submit(other)
        return self

    def _role_common(self, role: str, expr: Any | None = None) -> Any:
        if expr is not None:
            self.stream_executor.submit(SglExprList([SglRoleBegin(role), as_expr(expr), SglRoleEnd(role)]))
            return None
        return self._role_scope(role)

    @contextmanager
    def _role_scope(self, role: str) -> Iterator[None]:
        self.stream_executor.submit(SglRoleBegin(role))
        yield
        self.stream_executor.submit(SglRoleEnd(role))

    def system(self, expr: Any | None = None) -> Any:
        return self._role_common("system", expr)

    def user(self, expr: Any | None = None) -> Any:
        return self._role_common("user", expr)

    def assistant(self, expr: Any | None = None) -> Any:
        return self._role_common("assistant", expr)

    @contextmanager
    def var_scope(self, name: str) -> Iterator[None]:
        self.stream_executor.submit(SglVarScopeBegin(name))
        yield
        self.stream_executor.submit(SglVarScopeEnd(name))

    def fork(self, size: int = 1) -> ProgramStateGroup:
        children = self.stream_executor.fork(size)
        return ProgramStateGroup([ProgramState(c) for c in children], self)

    @contextmanager
    def copy(self) -> Iterator[ProgramState]:
        """A one-branch fork that is joined (variables gathered) when the block ends."""
        group = self.fork(1)
        try:
            yield group[0]
        finally:
            group.join()

    # --- reading --------------------------------------------------------------------------------

    def _wait(self) -> None:
        """Everything the program appends has run: for a streamed run, read from outside its
        function, that is once the function has returned; otherwise what was appended so far."""
        body = self.stream_executor.body_thread
        if body is not None and body is not threading.current_thread():
            body.join()
        self.stream_executor.sync()

    def sync(self) -> None:
        """Wait for the program (see _wait); raise its error if it failed."""
        self._wait()
        self.stream_executor.check_error()

    def error(self) -> BaseException | None:
        self._wait()
        return self.stream_executor.error_

    def text(self) -> str:
        self._wait()
        return self.stream_executor.text_

    def messages(self) -> list[dict[str, Any]]:
        self._wait()
        return self.stream_executor.messages_

    def get_var(self, name: str) -> Any:
        exe = self.stream_executor
        if name not in exe.variables and name not in exe.variable_event:
            self._wait()  # a streamed program may not have reached the expression yet
        return exe.get_var(name)

    def set_var(self, name: str, value: Any) -> None:
        self.stream_executor.set_var(name, value)

    def get_meta_info(self, name: str) -> Any:
        return self.stream_executor.get_meta_info(name)

    def __getitem__(self, name: str) -> Any:
        return self.get_var(name)

    def __setitem__(self, name: str, value: Any) -> None:
        self.set_var(name, value)

    def __contains__(self, name: str) -> bool:
        exe = self.stream_executor
        return name in exe.variables or name in exe.variable_event

    # --- streaming ------------------------------------------------------------------------------

    def text_iter(self, var_name: str | None = None) -> Iterator[str]:
        """Yield new text as it is produced (of the whole program, or of one variable)."""
        exe = self.stream_executor
        if not exe.stream:
            yield self.text() if var_name is None else self.get_var(var_name)
            return
        for piece, _ in _stream_pieces(exe, var_name, _blocking_wait):
            yield piece
        exe.check_error()

    async def text_async_iter(self, var_name: str | None = None,
                              return_meta_data: bool = False) -> AsyncIterator[Any]:
        """Async `text_iter`; with `return_meta_data`, yields (text, meta_info) for a variable."""
        exe = self.stream_executor
        loop = asyncio.get_running_loop()
        if not exe.stream:
            text = await loop.run_in_executor(None, self.text if var_name is None else lambda: self.get_var(var_name))
            if text:  # never an empty chunk, streamed or not
                yield (text, self.get_meta_info(var_name)) if return_meta_data and var_name else text
            return
        pieces = _stream_pieces(exe, var_name, _blocking_wait)
        while True:
            item = await loop.run_in_executor(None, next, pieces, None)
            if item is None:
                break
            yield item if return_meta_data and var_name else item[0]
        exe.check_error()

    def __del__(self) -> None:
        try:
            self.stream_executor.end()
        except Exception:  # interpreter shutdown
            pass

    def __repr__(self) -> str:
        return f"ProgramState({self.text()!r})"


def _blocking_wait(event: Any) -> None:
    event.wait()


def _stream_pieces(exe: StreamExecutor, var_name: str | None, wait: Callable) -> Iterator[tuple[str, Any]]:
    """(new text, meta_info) pieces of the program's text or of one variable, until done."""
    if var_name is None:
        event, done = exe.stream_text_event, (lambda: exe.is_finished)
        read = lambda: exe.text_
    else:
        while var_name not in exe.stream_var_event and not exe.is_finished:
            time.sleep(0.001)  # the program thread has not appended this gen yet
        if var_name not in exe.stream_var_event:
            return
        event, done = exe.stream_var_event[var_name], exe.variable_event[var_name].is_set
        read = lambda: exe.variables.get(var_name, "")
    sent = 0
    while True:
        wait(event)
        event.clear()
        finished = done()  # read after checking, so the last piece is never lost
        text = read()
        if isinstance(text, str) and len(text) > sent:
            yield text[sent:], exe.meta_info.get(var_name) if var_name else None
            sent = len(text)
        if finished:
            return


class ProgramStateGroup:
    """The branches of a fork. `forks += x` appends to every branch: `x` may be an expression
    or str (same for all), a list (one per branch) or a function of the branch index."""

    def __init__(self, states: list[ProgramState], src_state: ProgramState) -> None:
        self.states = states
        self.src_state = src_state

    def __getitem__(self, i: int) -> ProgramState:
        return self.states[i]

    def __setitem__(self, i: int, value: ProgramState) -> None:
        if value is not self.states[i]:
            raise ValueError("fork branches cannot be replaced; append to them with +=")

    def __len__(self) -> int:
        return len(self.states)

    def __iter__(self) -> Iterator[ProgramState]:
        return iter(self.states)

    def __iadd__(self, other: Any) -> ProgramStateGroup:
        if isinstance(other, (SglExpr, str)):
            items = [other] * len(self.states)
        elif isinstance(other, (list, tuple)):
            if len(other) != len(self.states):
                raise ValueError(f"got {len(other)} items for {len(self.states)} fork branches")
            items = list(other)
        elif callable(other):
            items = [other(i) for i in range(len(self.states))]
        else:
            raise TypeError(f"cannot append {type(other).__name__} to fork branches")
        for state, item in zip(self.states, items):
            state += item
        return self

    def join(self, mode: str = "gather_variable") -> None:
        if mode not in ("gather_variable", "concate_and_append"):
            raise ValueError(f"join mode must be 'gather_variable' or 'concate_and_append', got {mode!r}")
        join = SglJoin(mode, sources=[])
        join.branches = [s.stream_executor for s in self.states]
        self.src_state.stream_executor.submit(join)
        for s in self.states:
            s.stream_executor.end()
        self.src_state.sync()
