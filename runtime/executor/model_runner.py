"""ModelRunner: owns the device side (weights, KV pool, request->token table, attention backend,
sampler) and turns a step's inputs into sampled tokens."""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import os
from collections.abc import Iterator
from typing import Any, Optional

import torch
import torch.distributed as dist

from sgl.kernels.linear import configure_batch_invariance, configure_gemv
from sgl.runtime.cache.memory_pool import MHATokenToKVPool, ReqToTokenPool, TableWrites
from sgl.runtime.disaggregation.transfer import KVTransferAgent, PoolIO
from sgl.runtime.executor.attention import get_attention_backend
from sgl.runtime.executor.forward_batch import ForwardBatch
from sgl.runtime.executor.graph_setup import GraphSetup
from sgl.runtime.executor.logit_rows import LogitRows, auto_logit_rows
from sgl.runtime.executor.pool_sizing import auto_pool_tokens
from sgl.runtime.executor.pooling import PoolingConfig, read_pooling_config
from sgl.runtime.executor.step_results import PendingResult, step_outputs
from sgl.runtime.executor.tensor_parallel import (agree_min, broadcast_step, init_tensor_parallel,
                                                   leave_tensor_parallel, share_sampled_ids)
from sgl.runtime.layers.attention import kv_cache_scales
from sgl.runtime.layers.custom_all_reduce import uninstall as uninstall_one_shot
from sgl.runtime.loader import kv_layout, load_model
from sgl.runtime.loader.bundled import bundled_model_path
from sgl.runtime.matryoshka import Matryoshka
from sgl.runtime.sampling.sampler import Sampler
from sgl.runtime.scheduler.contract import (DraftInputs, KVJob, KVJobResult, KVLinkSpec, RunnerInfo,
                                            StepInputs, StepOutOfMemory)
from sgl.runtime.speculative.tree import DraftTree

logger = logging.getLogger("sgl.runner")

def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    return getattr(torch, name)


_KV_CACHE_DTYPES = {"fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}


def resolve_kv_cache_dtype(name: str, dtype: torch.dtype) -> torch.dtype:
    """The KV pool's storage dtype for --kv-cache-dtype (auto: the model's dtype)."""
    return dtype if name == "auto" else _KV_CACHE_DTYPES[name]


class ModelRunner(GraphSetup):
    """The executor behind the scheduler's `Runner` protocol (runtime/scheduler/contract.py)."""

    def __init__(self, server_args: Any, tp_rank: int = 0) -> None:
        self.args = server_args
        self.device = resolve_device(server_args.device)
        self.dtype = resolve_dtype(server_args.dtype, self.device)
        self.kv_cache_dtype = resolve_kv_cache_dtype(server_args.kv_cache_dtype, self.dtype)
        self.tp_size, self.tp_rank = server_args.tp_size, tp_rank
        # Overlap scheduling under tensor parallelism: rank 0 broadcasts each step's sampled ids,
        # which the next step's future_src names (TP=2 decode 7.9 -> 4.1 ms per step on H200s).
        # On unless --disable-overlap-schedule; on CPU (no overlap by default) it costs one small
        # broadcast per step and lets tests force overlap on.
        self.shares_sampled_ids = self.tp_size > 1 and not server_args.disable_overlap_schedule
        if self.tp_size > 1:
            init_tensor_parallel(tp_rank, self.tp_size, server_args.dist_init_addr, self.device,
                                 dist_timeout=server_args.dist_timeout,
                                 custom_all_reduce=server_args.enable_custom_all_reduce,
                                 custom_all_reduce_max_bytes=server_args.custom_all_reduce_max_bytes)
            if self.device.type == "cuda":
                self.device = torch.device("cuda", torch.cuda.current_device())
        self.graph_runner = self.verify_graph_runner = self.draft_graph_runner = None
        self.step_reserve: Any = None  # the profile step's measure (memory_profile.StepReserve), GPU only
        try:
            configure_gemv(not server_args.disable_gemv, server_args.gemv_configs)
            self._init_model()
            self.attn_backend = get_attention_backend(self._attention_backend_name())()
            if server_args.enable_deterministic_inference:
                self._check_batch_invariant()
                self.attn_backend.batch_invariant = True
            configure_batch_invariance(server_args.enable_deterministic_inference)
            self.sampler = Sampler()
            self._init_memory()
            self._init_speculative()
            self._init_cuda_graphs()
        except Exception:
            if self.tp_size > 1 and dist.is_initialized():
                uninstall_one_shot()
                dist.destroy_process_group()  # so this process can start another engine
            raise
        self.info = RunnerInfo(
            vocab_size=self.vocab_size, context_len=self.context_len,
            max_total_tokens=self.max_total_tokens, max_running_requests=self.max_running_requests,
            max_req_rows=self.req_to_token_pool.max_reqs, table_width=self.req_to_token_pool.max_context_len,
            chunked_prefill_size=self.chunked_prefill_size, pooling=self.pooling,
            can_overlap=self.device.type == "cuda" and (self.tp_size == 1 or self.shares_sampled_ids),
            kv_layout=(self.loaded.num_layers, self.loaded.num_kv_heads, self.loaded.head_dim,
                       str(self.kv_cache_dtype)),  # the pool's dtype (FP8 KV differs)
            kv_backend=server_args.transfer_backend(self.device.type),
            can_retry_steps=self.tp_size == 1)
        self.kv_transfer: Optional[KVTransferAgent] = None  # prefill-decode links, when opened
        self.used_cuda_graph = False
        self._last_tokens: Optional[torch.Tensor] = None  # the last launched step's sampled ids
        self.captured_hidden: Optional[torch.Tensor] = None  # the last step's, kept for the drafter (EAGLE)
        self.pooled: Optional[torch.Tensor] = None  # the last step's (num_pool_spans, hidden) sums
        self.hidden_out: Optional[torch.Tensor] = None  # the last step's StepInputs.hidden_rows
        # Table writes rank 0 applied for its drafter, owed to the other ranks' tables.
        self._writes_for_followers: list[TableWrites] = []

    def _init_model(self) -> None:
        self.model_path = self.args.model_path or bundled_model_path()
        torch.manual_seed(self.args.random_seed)
        self.loaded = load_model(self.model_path, self.args.load_format, dtype=self.dtype,
                                 device=self.device, seed=self.args.random_seed,
                                 context_length=self.args.context_length, tp_rank=self.tp_rank,
                                 tp_size=self.tp_size, quantization=self.args.quantization)
        self.model = self.loaded.model
        self.vocab_size = self.loaded.vocab_size
        self.context_len = self.loaded.context_len
        self.max_logit_rows = self.args.logits_chunk_size or auto_logit_rows(self.vocab_size)
        self.pooling: Optional[PoolingConfig] = None
        self.matryoshka: Optional[Matryoshka] = None  # embeddings: the `dimensions` allowed
        if not self.args.is_embedding:
            self.model.head()  # a checkpoint without an LM head cannot generate: say so now
        else:  # a GGUF file or shipped config has no sentence-transformers files
            path = self.loaded.model_path
            self.pooling = read_pooling_config(path) if os.path.isdir(path) else PoolingConfig()
            self.matryoshka = Matryoshka.of(self.loaded.hf_config)

    def _init_memory(self) -> None:
        L = self.loaded
        default_running = 256 if self.device.type == "cpu" else 1024
        self.max_running_requests = self.args.max_running_requests or default_running
        chunk = self.args.chunked_prefill_size
        if chunk is None:
            chunk = 2048 if self.device.type == "cpu" else 8192
        self.chunked_prefill_size = chunk if chunk > 0 else max(self.args.max_prefill_tokens, self.context_len)
        # An FP8 pool holds one byte an element: twice bfloat16's tokens in the same memory.
        probe = MHATokenToKVPool(1, L.num_kv_heads, L.head_dim, L.num_layers, self.kv_cache_dtype, "meta")
        self.max_total_tokens = self.args.max_total_tokens or auto_pool_tokens(
            self, probe.bytes_per_token() + self._draft_bytes_per_token())
        if self.tp_size > 1:  # every rank must hold the same slots
            self.max_total_tokens = agree_min(self.max_total_tokens)
        max_reqs = min(self.max_running_requests, self.max_total_tokens) + 1
        width = min(self.context_len, self.max_total_tokens) + 8
        self.req_to_token_pool = ReqToTokenPool(max_reqs, width, self.device)
        self.kv_pool = MHATokenToKVPool(self.max_total_tokens, L.num_kv_heads, L.head_dim,
                                        L.num_layers, self.kv_cache_dtype, self.device)
        if self.kv_pool.is_fp8:  # the checkpoint's scales (kv_cache_scheme), else 1.0
            self.kv_pool.set_scales(*kv_cache_scales(self.model))
        logger.info("KV pool: %d tokens (%.2f GB, %s), max running requests %d",
                    self.max_total_tokens, self.max_total_tokens * probe.bytes_per_token() / 1e9,
                    str(self.kv_cache_dtype).removeprefix("torch."), self.max_running_requests)

    def _draft_bytes_per_token(self) -> int:
        """A draft model keeps a KV pool of as many tokens as the target's (speculative/
        draft_worker.py), so the auto-sized pool leaves room for it. Counted whenever a draft
        model is named, also with speculation off: bench_speculative starts that way and turns
        speculation on later."""
        path = self.args.speculative_draft_model_path
        if not path:
            return 0
        layers, kv_heads, head_dim = kv_layout(path)
        return MHATokenToKVPool(1, kv_heads, head_dim, layers, self.dtype, "meta").bytes_per_token()

    def shutdown(self) -> None:
        """Release the CUDA graphs now rather than whenever the runner is collected (a graph
        destroyed while another engine of this process captures breaks that capture); rank 0
        of a tensor-parallel group also releases the other ranks and leaves the groups. Then
        the weights, the KV pool, the table and the drafter go too, even while something still
        holds this runner (an Engine kept by the default backend): a second engine of this
        process gets the memory back."""
        if self.kv_transfer is not None:
            self.kv_transfer.close_all()
        if self.tp_size > 1 and self.tp_rank == 0 and dist.is_initialized():
            broadcast_step(None)
            leave_tensor_parallel(self)  # resets the graphs first
        else:
            self.release_cuda_graphs()
        self.release_memory()

    def release_memory(self) -> None:
        """Drop every device tensor this runner holds; it cannot run steps afterwards."""
        self.drafter = None
        self.model = self.loaded = None
        self.kv_pool = self.req_to_token_pool = self.attn_backend = None
        self._last_tokens = self.captured_hidden = self.hidden_out = None
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()

    def _check_batch_invariant(self) -> None:
        """--enable-deterministic-inference needs the Triton attention kernels (the torch
        reference's SDPA blocks keys by the sequence's length) and no fused-MoE layer (its
        launch config follows the batch)."""
        from sgl.runtime.layers.moe import FusedMoE
        name = self._attention_backend_name()
        if name != "triton":
            raise ValueError(f"enable_deterministic_inference needs attention_backend triton (a CUDA "
                             f"GPU, or TRITON_INTERPRET=1 on the CPU), got {name}")
        if any(isinstance(m, FusedMoE) for m in self.model.modules()):
            raise ValueError("enable_deterministic_inference does not support mixture-of-experts "
                             f"models yet ({type(self.model).__name__})")

    def _attention_backend_name(self) -> str:
        if self.args.attention_backend:
            return self.args.attention_backend
        return "triton" if self.device.type == "cuda" else "torch_native"

    # -- speculative decoding (the drafter lives here; the scheduler plans) --------------------
    def _init_speculative(self) -> None:
        """A model drafter (rank 0 only: it drafts alone, with no collectives) before the graphs
        are captured, so that an EAGLE-3 head's captured layers are in the verify graphs."""
        from sgl.runtime.executor.drafter import make_drafter, shared_vocab_tables
        vocab = shared_vocab_tables(self) if self.tp_size > 1 else None  # every rank joins the gather
        self.drafter = make_drafter(self.args, self, vocab) if self.tp_rank == 0 else None

    def set_speculative(self, server_args: Any) -> None:
        """Switch to these speculative settings on a running engine (benchmark sweeps, TP 1)."""
        from sgl.runtime.executor.drafter import make_drafter
        if self.tp_size > 1:
            raise ValueError("speculative settings change only with tp_size 1; restart the engine")
        if self.drafter is not None:
            self.drafter.close()
        self.args = server_args
        self.drafter = make_drafter(server_args, self, None)
        if server_args.speculative_algorithm:
            self.prepare_verify_graphs(server_args.speculative_settings()[2])
        if self.drafter is not None:
            self.drafter.graph_runner = self.prepare_draft_graphs(self.drafter)

    def draft(self, inputs: DraftInputs) -> list[DraftTree]:
        assert self.drafter is not None, "no model drafter: NGRAM drafts in the scheduler"
        self.req_to_token_pool.apply(inputs.table_writes)
        if inputs.table_writes is not None and self.tp_size > 1:
            self._writes_for_followers.append(inputs.table_writes)
        self.drafter.observe(inputs.observed, self.captured_hidden)
        self.captured_hidden = None
        self.drafter.release(inputs.released)
        return self.drafter.propose(inputs.requests)

    # -- KV transfers (prefill-decode disaggregation; runtime/disaggregation/transfer.py) ------
    def open_kv_link(self, spec: KVLinkSpec) -> None:
        if self.kv_transfer is None:
            self.kv_transfer = KVTransferAgent(PoolIO(self.kv_pool))
        self.kv_transfer.open(spec)

    def submit_kv(self, job: KVJob) -> None:
        assert self.kv_transfer is not None, "open_kv_link first"
        self.kv_transfer.submit(job)

    def poll_kv(self) -> list[KVJobResult]:
        return self.kv_transfer.poll() if self.kv_transfer is not None else []

    def close_kv_link(self, link_id: int) -> None:
        if self.kv_transfer is not None:
            self.kv_transfer.close(link_id)

    # -- the step -------------------------------------------------------------------------
    @torch.inference_mode()
    def forward_logits(self, batch: ForwardBatch, keep_hidden: bool = False,
                       pool_spans: Optional[list[tuple[int, int]]] = None) -> torch.Tensor:
        """(num_logit_rows, vocab) float32 logits for batch.logits_indices, all at once (see
        `forward_rows`)."""
        return self.forward_rows(batch, keep_hidden, pool_spans).all()

    @torch.inference_mode()
    def forward_rows(self, batch: ForwardBatch, keep_hidden: bool = False,
                     pool_spans: Optional[list[tuple[int, int]]] = None,
                     hidden_rows: Optional[list[int]] = None) -> LogitRows:
        """The forward, and the logits of batch.logits_indices: computed with it when they fit
        in one chunk of `max_logit_rows`, else chunk by chunk as they are read (a prefill whose
        every row scores a prompt logprob). With keep_hidden, the step's hidden states (the
        final ones, or the captured layers' for an EAGLE-3 drafter) are kept for the drafter.
        With pool_spans (embeddings), the float32 sums of the final hidden states over each
        span's rows go to `self.pooled`; with hidden_rows (return_hidden_states), the float32
        final hidden states of those token rows go to `self.hidden_out`. Decode batches replay
        the decode graphs, verify batches (tree masks) the verify graphs, when their sizes were
        captured; a batch keeping or returning hidden states runs eagerly."""
        verify_plan = None
        if self.verify_graph_runner is not None and not hidden_rows:  # on the host, before the batch moves
            verify_plan = self.verify_graph_runner.plan(batch)
        batch.to(self.device)
        if batch.future_src is not None:  # overlap: ids sampled by the step still in flight
            src = batch.future_src.to(self.device, non_blocking=True)
            batch.input_ids = torch.where(src >= 0, self._last_tokens[src.clamp(min=0)], batch.input_ids)
        batch.req_to_token = self.req_to_token_pool.req_to_token
        batch.kv_pool, batch.attn_backend = self.kv_pool, self.attn_backend
        if verify_plan is not None:
            self.used_cuda_graph = True
            logits, hidden = self.verify_graph_runner.replay(batch, verify_plan, keep_hidden)
            self.captured_hidden = hidden if keep_hidden else None
            return self._rows(logits)
        self.used_cuda_graph = (not keep_hidden and not pool_spans and not hidden_rows
                                and self.graph_runner is not None and self.graph_runner.can_run(batch))
        if self.used_cuda_graph:
            return self._rows(self.graph_runner.replay(batch))
        self.attn_backend.init_forward_metadata(batch)
        hidden = self.model(batch.input_ids, batch.positions, batch)  # (num_tokens, hidden)
        if keep_hidden:
            self.captured_hidden = hidden if batch.aux_hidden_states is None else batch.aux_hidden_states
        if pool_spans:
            self.pooled = torch.stack([hidden[lo:hi].float().sum(0) for lo, hi in pool_spans])
        if hidden_rows:  # only a step that asks pays for this gather and its copy to the host
            rows = torch.tensor(hidden_rows, dtype=torch.int64).to(self.device, non_blocking=True)
            self.hidden_out = hidden[rows].float()  # (len(hidden_rows), hidden)
        if batch.logits_indices.numel() == 0:  # embedding steps sample nothing (and may have no LM head)
            return self._rows(hidden.new_empty((0, self.vocab_size), dtype=torch.float32))
        rows = hidden[batch.logits_indices]  # (num_logit_rows, hidden)
        if rows.shape[0] <= self.max_logit_rows:
            return self._rows(self.model.compute_logits(rows))
        return LogitRows.of_hidden(rows, self.model.compute_logits, self.max_logit_rows)

    def _rows(self, logits: torch.Tensor) -> LogitRows:
        return LogitRows(int(logits.shape[0]), self.max_logit_rows, logits=logits)

    @torch.inference_mode()
    def follow_step(self, batch: ForwardBatch, writes: list[Optional[TableWrites]], num_sampled: int,
                    hidden_rows: Optional[list[int]] = None) -> None:
        """A tensor-parallel follower's step: rank 0's table writes (its drafter's first, in
        order), the same forward (eager where rank 0's is: hidden_rows, so that the collectives
        match a CUDA graph's padded sizes or not alike), and the ids rank 0 sampled (overlap: a
        later step names them)."""
        for w in writes:
            self.req_to_token_pool.apply(w)
        self.forward_rows(dataclasses.replace(batch), hidden_rows=hidden_rows).materialize()  # rank 0's LM-head chunks
        if num_sampled:
            self._last_tokens = share_sampled_ids(
                torch.empty(num_sampled, dtype=torch.int64, device=self.device))

    @torch.inference_mode()
    def launch_batch(self, step: StepInputs) -> PendingResult:
        """Queue the step's forward and sampling on the device without waiting for them; the
        returned handle's `resolve()` waits and reads the results back. Overlap scheduling plans
        the next step in between (its input ids may name this step's tokens: `future_src`)."""
        return self.launch_sampling(step, self.launch_forward(step))

    @torch.inference_mode()
    def launch_forward(self, step: StepInputs) -> LogitRows:
        """Queue the forward alone: the logit rows of step.batch.logits_indices."""
        if self.tp_size > 1:  # the other ranks run the same forward (rank 0 alone samples)
            num_sampled = len(step.sample_rows) if self.shares_sampled_ids else 0
            writes = self._writes_for_followers + [step.table_writes]
            self._writes_for_followers = []
            broadcast_step((dataclasses.replace(step.batch), writes, num_sampled, step.hidden_rows))
        self.req_to_token_pool.apply(step.table_writes)
        with self._out_of_memory_as_step_error():
            return self.forward_rows(step.batch, keep_hidden=step.capture_hidden,
                                     pool_spans=step.pool_spans, hidden_rows=step.hidden_rows)

    @torch.inference_mode()
    def launch_sampling(self, step: StepInputs, rows: LogitRows) -> PendingResult:
        """Queue sampling (with step.vocab_mask, which may be filled after launch_forward) and
        the prompt logprobs, a bounded chunk of logit rows at a time."""
        pending = PendingResult(step, self.used_cuda_graph)
        with self._out_of_memory_as_step_error():
            pending.sampled, pending.prompt_lp = step_outputs(rows, step, self.sampler,
                                                              self.vocab_size, self.device)
        if pending.sampled is not None:
            self._last_tokens = pending.sampled.next_token_ids
            if self.shares_sampled_ids:  # the other ranks keep them too, for the next future_src
                share_sampled_ids(self._last_tokens)
        if step.pool_spans:
            pending.pooled = self.pooled
        if step.hidden_rows:
            pending.hidden = self.hidden_out
        pending.copy_to_host()
        return pending

    @contextlib.contextmanager
    def _out_of_memory_as_step_error(self) -> Iterator[None]:
        """Out of device memory in a step: hand the allocator's cached blocks back and raise
        StepOutOfMemory, which the scheduler answers by running the work in smaller steps."""
        try:
            yield
        except torch.OutOfMemoryError as e:
            gc.collect()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            raise StepOutOfMemory(str(e).split("\n")[0]) from e
