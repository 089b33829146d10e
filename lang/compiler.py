"""Compile a traced program into a prompt-sharing call graph and run it.

Each stream of the trace (the program, every fork branch, every nested program) gets its own
executor per run; all nodes are submitted at once in topological order, so branches issue
their requests concurrently and wait only on what they read (a variable of another stream, the
fork that seeds them, the branches they join). The program's constant start is sent to the
backend once per backend, before the first run."""
from __future__ import annotations

import threading
from typing import Any

from sgl.lang.function import split_sampling_kwargs
from sgl.lang.interpreter import StreamExecutor
from sgl.lang.ir import (
    SglArgument,
    SglConstantText,
    SglExpr,
    SglFork,
    SglGetForkItem,
    SglJoin,
    SglSamplingParams,
    SglVariable,
)
from sgl.lang.runner import pick_backend, run_many
from sgl.lang.state import ProgramState


def compile_func(function: Any, backend: Any = None) -> CompiledFunction:
    return CompiledFunction(function.trace(backend=backend), function)


class CompGraphNode:
    def __init__(self, expr: SglExpr) -> None:
        self.expr = expr
        self.prev_node: CompGraphNode | None = None
        self.source_nodes: list[CompGraphNode] = []
        self.next_nodes: list[CompGraphNode] = []

    @property
    def pid(self) -> int:
        return self.expr.pid

    def __repr__(self) -> str:
        text = f"stream {self.pid:2d}: %{self.expr.node_id} = "
        if self.prev_node is not None:
            text += f"%{self.prev_node.expr.node_id} + "
        text += repr(self.expr)
        if self.source_nodes:
            text += "  <- " + ", ".join(f"%{s.expr.node_id}" for s in self.source_nodes)
        return text


class CompiledFunction:
    def __init__(self, tracer: Any, function: Any) -> None:
        self.function = function
        self.main_pid = tracer.pid
        self.prefix_text = tracer.prefix_text
        self._precached: set[int] = set()
        self._lock = threading.Lock()
        self._build_graph([n for st in tracer.session.states for n in st.nodes])
        self._topological_sort()

    # --- graph ----------------------------------------------------------------------------------

    def _build_graph(self, exprs: list[SglExpr]) -> None:
        self.nodes = [CompGraphNode(e) for e in exprs]
        by_expr = {id(n.expr): n for n in self.nodes}
        for node in self.nodes:
            expr = node.expr
            if expr.prev_node is not None:
                node.prev_node = by_expr[id(expr.prev_node)]
            sources = [expr.source] if isinstance(expr, SglVariable) else []
            sources += expr.sources if isinstance(expr, SglJoin) else []
            node.source_nodes = [by_expr[id(s)] for s in sources if id(s) in by_expr]
            for dep in [node.prev_node] + node.source_nodes:
                if dep is not None:
                    dep.next_nodes.append(node)

    def _topological_sort(self) -> None:
        indegree = {id(n): (n.prev_node is not None) + len(n.source_nodes) for n in self.nodes}
        ready = sorted((n for n in self.nodes if indegree[id(n)] == 0), key=lambda n: n.expr.node_id)
        order = []
        while ready:
            node = ready.pop(0)
            order.append(node)
            for nxt in node.next_nodes:
                indegree[id(nxt)] -= 1
                if indegree[id(nxt)] == 0:
                    ready.append(nxt)
        if len(order) != len(self.nodes):
            raise ValueError("the traced program has a dependency cycle")
        self.nodes = order

    @property
    def streams(self) -> dict[int, list[CompGraphNode]]:
        """Nodes of each stream, in execution order (stream `main_pid` is the program's own)."""
        out: dict[int, list[CompGraphNode]] = {}
        for node in self.nodes:
            out.setdefault(node.pid, []).append(node)
        return out

    def graph_str(self) -> str:
        return "\n".join(repr(n) for n in self.nodes)

    def print_graph(self) -> None:
        print(self.graph_str())

    # --- running --------------------------------------------------------------------------------

    def run(self, *, backend: Any = None, **kwargs: Any) -> ProgramState:
        params, kwargs = split_sampling_kwargs(kwargs)
        backend = pick_backend(backend)
        self._precache(backend)
        return self.run_internal(backend, kwargs, params)

    def run_batch(self, batch_kwargs: list[dict[str, Any]], *, backend: Any = None,
                  num_threads: str | int = "auto", progress_bar: bool = False,
                  **sampling: Any) -> list[ProgramState]:
        params, extra = split_sampling_kwargs(dict(sampling))
        if extra:
            raise TypeError(f"run_batch() got unexpected keyword(s) {sorted(extra)}")
        backend = pick_backend(backend)
        self._precache(backend)
        return run_many(lambda kw: self.run_internal(backend, kw, params, raise_error=False),
                        [dict(k) for k in batch_kwargs], num_threads, progress_bar, False)

    def _precache(self, backend: Any) -> None:
        from sgl.lang.global_config import global_config
        with self._lock:
            if id(backend) in self._precached:
                return
            self._precached.add(id(backend))
        if len(self.prefix_text) > global_config.precache_min_chars:
            backend.cache_prefix(self.prefix_text)

    def run_internal(self, backend: Any, kwargs: dict[str, Any], params: SglSamplingParams,
                     raise_error: bool = True) -> ProgramState:
        kwargs = {**self.function.arg_defaults, **kwargs, **self.function.bind_arguments}
        executors = {pid: StreamExecutor(backend, kwargs, params) for pid in self.streams}
        gates: dict[int, threading.Event] = {pid: threading.Event() for pid in executors}
        try:
            for node in self.nodes:
                executors[node.pid].submit(self._materialize(node, kwargs, executors, gates))
        finally:
            for exe in executors.values():
                exe.end()
        for exe in executors.values():
            exe.sync()
        main = executors[self.main_pid]
        if raise_error:
            for exe in [main] + list(executors.values()):
                exe.check_error()
        elif main.error_ is None:
            main.error_ = next((e.error_ for e in executors.values() if e.error_), None)
        return ProgramState(main)

    def _materialize(self, node: CompGraphNode, kwargs: dict[str, Any], executors: dict, gates: dict) -> SglExpr:
        """The node as this run executes it: arguments bound, cross-stream links resolved."""
        expr = node.expr
        if isinstance(expr, SglArgument):
            if expr.name not in kwargs:
                raise TypeError(f"{self.function.__name__}() missing argument {expr.name!r}")
            return SglConstantText(str(kwargs[expr.name]))
        if isinstance(expr, SglVariable):
            src = node.source_nodes[0].pid if node.source_nodes else node.pid
            return SglVariable(expr.name, source_stream_executor=executors[src])
        if isinstance(expr, SglFork):
            fork = SglFork(expr.size)
            fork.children = [(executors[n.pid], gates[n.pid]) for n in node.next_nodes
                             if isinstance(n.expr, SglGetForkItem)]
            return fork
        if isinstance(expr, SglGetForkItem):
            item = SglGetForkItem(expr.index)
            item.gate = gates[node.pid]
            return item
        if isinstance(expr, SglJoin):
            join = SglJoin(expr.mode, sources=[])
            join.branches = [executors[s.pid] for s in node.source_nodes]
            return join
        return expr
