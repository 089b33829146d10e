"""The CUDA graphs a ModelRunner keeps (decode, speculative verify, draft): which batch sizes
are captured, capture at start-up, recapture when speculation settings change, release before
the process group goes. A mixin of ModelRunner: it reads the runner's args, device, model and
pools, and sets its graph_runner / verify_graph_runner / draft_graph_runner."""
from __future__ import annotations

import logging
from typing import Any

import torch

logger = logging.getLogger("sgl.runner")


class GraphSetup:
    def _graphs_wanted(self) -> bool:
        """Decode graphs at all: on CUDA unless disabled, and never for an embedding model (it
        never decodes, and may have no LM head whose logits a capture computes)."""
        return self.device.type == "cuda" and not self.args.disable_cuda_graph and not self.args.is_embedding

    def _init_cuda_graphs(self) -> None:
        self.graph_runner = self.verify_graph_runner = self.draft_graph_runner = None
        if not self._graphs_wanted():
            return
        if self._attention_backend_name() != "triton":
            logger.info("CUDA graphs need the triton attention backend; decoding eagerly")
            return
        from sgl.runtime.executor.cuda_graph_runner import CudaGraphRunner
        sizes = self._graph_batch_sizes()
        self.graph_runner = CudaGraphRunner(self, sizes)
        if self.args.speculative_algorithm:
            self.prepare_verify_graphs(self.args.speculative_settings()[2])
        if self.drafter is not None:
            self.drafter.graph_runner = self.prepare_draft_graphs(self.drafter)

    def _graph_batch_sizes(self) -> list[int]:
        """The decode batch sizes captured in CUDA graphs (none where decode runs eagerly)."""
        from sgl.runtime.executor.cuda_graph_runner import auto_max_bs, default_batch_sizes
        if not self._graphs_wanted() or self._attention_backend_name() != "triton":
            return []
        max_bs = self.args.cuda_graph_max_bs or auto_max_bs(torch.cuda.get_device_properties(self.device).total_memory)
        max_bs = min(max_bs, self.max_running_requests)
        sizes = self.args.cuda_graph_bs or default_batch_sizes(max_bs)
        return [bs for bs in sizes if bs <= self.max_running_requests]

    def prepare_verify_graphs(self, num_rows: int) -> None:
        """Speculative verify forwards (the target over each request's root and draft tree of at
        most num_rows rows) replay graphs of their own, sharing the decode graphs' memory pool.
        Captured at start-up when speculation is on; called again when a benchmark switches
        speculation settings on a running engine (a new num_rows recaptures)."""
        from sgl.runtime.executor.verify_graph_runner import VerifyGraphRunner, verify_batch_sizes
        if self.graph_runner is None or (self.verify_graph_runner is not None
                                         and self.verify_graph_runner.num_rows == num_rows):
            return
        self.verify_graph_runner = None  # its graphs' memory goes back to the shared pool first
        sizes = verify_batch_sizes(self.graph_runner.batch_sizes, num_rows)
        if sizes:
            self.verify_graph_runner = VerifyGraphRunner(self, sizes, num_rows, pool=self.graph_runner.pool)

    def prepare_draft_graphs(self, drafter: Any) -> Any:
        """CUDA graphs of a model drafter's tree steps (decode batches of the draft model; see
        runtime/executor/draft_graph_runner.py), sharing the decode graphs' memory pool.
        Called by each new drafter (a benchmark may switch settings on a running engine: the
        previous drafter's graphs go first). Returns the graph runner, None where decode runs
        eagerly (CPU, --disable-cuda-graph, a backend other than triton) or with
        --disable-draft-cuda-graph (the drafter alone eager)."""
        from sgl.runtime.executor.cuda_graph_runner import release_graphs
        from sgl.runtime.executor.draft_graph_runner import DraftGraphRunner, draft_batch_sizes
        if self.draft_graph_runner is not None:
            release_graphs(self.draft_graph_runner.graphs)
            self.draft_graph_runner = None
        if self.graph_runner is None or self.args.disable_draft_cuda_graph:
            return None
        sizes = draft_batch_sizes(self.graph_runner.batch_sizes, drafter.topk)
        if sizes:
            self.draft_graph_runner = DraftGraphRunner(drafter, sizes, pool=self.graph_runner.pool)
        return self.draft_graph_runner

    def release_cuda_graphs(self) -> None:
        """Reset and drop every captured graph (decode, verify, draft). Graphs that captured NCCL
        collectives must go before the process group is destroyed, or the destroy blocks forever
        (pytorch/pytorch#115388; seen here on H100s as a TP=2 engine that never shut down)."""
        from sgl.runtime.executor.cuda_graph_runner import release_graphs
        for runner in (self.graph_runner, self.verify_graph_runner, self.draft_graph_runner):
            if runner is not None:
                release_graphs(runner.graphs)
        self.graph_runner = self.verify_graph_runner = self.draft_graph_runner = None
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
