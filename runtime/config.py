"""Server arguments: one frozen dataclass, SGLang's flag names. The CLI is generated from it:
each field's `help` metadata becomes the flag's help text."""
from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Optional

from sgl.runtime.reasoning_parser import PARSER_NAMES as REASONING_PARSERS

SCHEDULE_POLICIES = ("lpm", "dfs-weight", "fcfs", "random")
LOAD_FORMATS = ("auto", "safetensors", "gguf", "dummy")
DTYPES = ("auto", "float32", "bfloat16", "float16")
SPECULATIVE_ALGORITHMS = ("NGRAM", "EAGLE", "EAGLE3", "STANDALONE")
LOAD_BALANCE_METHODS = ("round_robin", "shortest_queue")
TOOL_CALL_PARSERS = ("smollm2", "qwen25", "llama3", "qwen", "hermes")  # see runtime/server/tools
DISAGGREGATION_MODES = ("null", "prefill", "decode")
TRANSFER_BACKENDS = ("auto", "nccl", "gloo")
QUANTIZATION_METHODS = ("fp8",)
KV_CACHE_DTYPES = ("auto", "fp8_e4m3", "fp8_e5m2")
HIDDEN_STATES_MODES = ("last", "full")


def _f(default: Any, help: str, **kw: Any) -> Any:
    return field(default=default, metadata={"help": help, **kw})


@dataclass(frozen=True)
class ServerArgs:
    # Model and tokenizer
    model_path: Optional[str] = _f(None, "HF folder, .gguf file or config-only folder; default: the bundled SmolLM2-135M-Instruct.")
    tokenizer_path: Optional[str] = _f(None, "Tokenizer folder; default: the model's own.")
    load_format: str = _f("auto", "How to read weights.", choices=LOAD_FORMATS)
    dtype: str = _f("auto", "Compute dtype: auto is float32 on CPU, bfloat16 on GPU.", choices=DTYPES)
    device: str = _f("auto", "cpu, cuda or auto.")
    context_length: Optional[int] = _f(None, "Override the model's context length.")
    trust_remote_code: bool = _f(False, "Passed to transformers when reading configs and tokenizers.")
    skip_tokenizer_init: bool = _f(False, "Take and return token ids only.")
    served_model_name: Optional[str] = _f(None, "Model name reported by the OpenAI routes.")
    chat_template: Optional[str] = _f(None, "Chat template name or Jinja file; default: the tokenizer's.")
    is_embedding: bool = _f(False, "Serve an embedding model: /encode, /v1/embeddings and Engine.encode pool "
                            "the prompt's final hidden states as its sentence-transformers files say "
                            "(default: last token, normalized); generation is refused.")
    random_seed: int = _f(0, "Seed for weights of dummy models and for unseeded sampling.")
    quantization: Optional[str] = _f(None, "fp8: quantize a 16/32-bit checkpoint's linear layers to FP8 "
                                     "e4m3 at load (a scale per output channel, activations per "
                                     "token). A checkpoint published in FP8 loads as such without it.",
                                     choices=QUANTIZATION_METHODS)
    kv_cache_dtype: str = _f("auto", "KV cache storage: auto (the model's dtype), fp8_e4m3 or fp8_e5m2 "
                             "(one byte an element; per-layer scales from the checkpoint, else 1.0).",
                             choices=KV_CACHE_DTYPES)
    # Memory and scheduling
    mem_fraction_static: Optional[float] = _f(None, "Share of GPU memory for weights and KV pool (auto when unset).")
    max_total_tokens: Optional[int] = _f(None, "KV pool size in tokens (overrides mem_fraction_static).")
    max_running_requests: Optional[int] = _f(None, "Most requests decoding at once.")
    max_prefill_tokens: int = _f(16384, "Most new tokens admitted in one prefill step.")
    chunked_prefill_size: Optional[int] = _f(None, "Split prompts into chunks of this many tokens (-1: off); auto 8192 on GPU, 2048 on CPU.")
    logits_chunk_size: Optional[int] = _f(None, "Most logit rows materialised at once (sampling, prompt "
                                          "logprobs and their top-k, grammar masks); auto: 512 MiB of "
                                          "float32 logits (1,046 rows of a 128k vocabulary).")
    schedule_policy: str = _f("fcfs", "Order of admission from the waiting queue.", choices=SCHEDULE_POLICIES)
    schedule_conservativeness: float = _f(1.0, "Higher reserves more KV for running requests.")
    enable_priority_scheduling: bool = _f(False, "Admit waiting requests by their `priority` (higher "
                                          "values first; FCFS within a priority). Needs "
                                          "--schedule-policy fcfs, as in SGLang.")
    schedule_low_priority_values_first: bool = _f(False, "With --enable-priority-scheduling: lower "
                                                  "priority values are admitted first.")
    priority_scheduling_preemption_threshold: int = _f(10, "A waiting request that cannot be admitted "
                                                       "(no request slot or KV room) preempts running "
                                                       "requests whose priority is worse by more than this.")
    disable_priority_preemption: bool = _f(False, "With --enable-priority-scheduling: never preempt "
                                           "running requests for higher-priority ones.")
    default_priority_value: Optional[int] = _f(None, "With --enable-priority-scheduling: the priority "
                                               "of requests that give none (default: below every "
                                               "explicit priority).")
    abort_on_priority_when_disabled: bool = _f(False, "Without --enable-priority-scheduling: refuse "
                                               "requests that give a priority (default: ignore it).")
    enable_mixed_chunk: bool = _f(False, "Run prompt chunks and admissions in the same step as decoding "
                                  "requests (default: a step with prompt work runs prompts only).")
    disable_radix_cache: bool = _f(False, "Turn off prefix reuse.")
    stream_interval: int = _f(1, "Stream a chunk every this many tokens.")
    enable_return_hidden_states: bool = _f(False, "Let requests ask for the final layer's hidden states "
                                           "(return_hidden_states); the same as "
                                           "--return-hidden-states-mode full.")
    return_hidden_states_mode: Optional[str] = _f(None, "The most a request may ask for: last (the last "
                                                  "position's hidden state) or full (every position's).",
                                                  choices=HIDDEN_STATES_MODES)
    # Kernels and GPU
    attention_backend: Optional[str] = _f(None, "triton or torch_native (auto: triton on GPU).")
    disable_cuda_graph: bool = _f(False, "Run decode eagerly.")
    cuda_graph_max_bs: Optional[int] = _f(None, "Largest decode batch captured in a CUDA graph.")
    cuda_graph_bs: Optional[list[int]] = _f(None, "Batch sizes to capture.", nargs="+", type=int)
    disable_overlap_schedule: bool = _f(False, "Do not overlap CPU scheduling with GPU work.")
    disable_gemv: bool = _f(False, "Batch-1 linears on cuBLAS too, never the Triton GEMV (e.g. to compare the two).")
    enable_deterministic_inference: bool = _f(False, "Batch-invariant kernels: a request's logits do "
                                              "not depend on the other requests of its batches "
                                              "(or on how its prompt was split or cached); slower. "
                                              "Needs the Triton attention backend.")
    gemv_configs: Optional[str] = _f(None, "JSON table of Triton GEMV configs by weight shape "
                                     "(`sgl/bench_gemv.py --table-out FILE`), laid over the "
                                     "shipped table for this GPU (kernels/configs/gemv/).")
    # Structured output
    grammar_backend: str = _f("xgrammar", "Grammar backend.", choices=("xgrammar", "outlines", "none"))
    disable_jump_forward: bool = _f(False, "Sample forced grammar spans token by token.")
    grammar_compile_timeout: float = _f(30.0, "Seconds a grammar may compile before its request "
                                        "fails (the grammar is then refused at once).")
    tool_call_parser: Optional[str] = _f(None, "Tool-call format (default: picked from the model).",
                                         choices=TOOL_CALL_PARSERS)
    reasoning_parser: Optional[str] = _f(None, "Split <think> reasoning from the answer in chat "
                                         "responses (reasoning_content).", choices=REASONING_PARSERS)
    # Speculative decoding
    speculative_algorithm: Optional[str] = _f(None, "Draft tokens and verify them in one target forward.",
                                              choices=SPECULATIVE_ALGORITHMS)
    speculative_draft_model_path: Optional[str] = _f(None, "Draft model (EAGLE/EAGLE3 head or STANDALONE model).")
    speculative_num_steps: Optional[int] = _f(None, "Draft depth: draft forward steps per verify (default 3).")
    speculative_eagle_topk: Optional[int] = _f(None, "Branching: candidates kept per draft step (default 1).")
    speculative_num_draft_tokens: Optional[int] = _f(None, "Tokens verified per request, the last accepted one included (default num_steps + 1; NGRAM 8).")
    speculative_ngram_min_match_window_size: int = _f(1, "NGRAM: shortest suffix looked up.")
    speculative_ngram_max_match_window_size: int = _f(12, "NGRAM: longest suffix looked up.")
    speculative_ngram_max_bfs_breadth: int = _f(8, "NGRAM: most earlier matches merged into the draft tree.")
    disable_draft_cuda_graph: bool = _f(False, "Run a draft model's tree steps eagerly while the target "
                                        "decodes under CUDA graphs (to compare the two).")
    # Parallelism
    tp_size: int = _f(1, "Tensor-parallel ranks.")
    dist_init_addr: Optional[str] = _f(None, "host:port of rank 0 for torch.distributed (auto: a free local port).")
    nnodes: int = _f(1, "Nodes the tensor-parallel ranks are spread over.")
    node_rank: int = _f(0, "This node's index; node 0 runs the scheduler and the HTTP server.")
    enable_custom_all_reduce: bool = _f(False, "All-reduce small tensors one-shot over GPU peer memory "
                                        "(ranks of one node) instead of NCCL; no faster on H100s "
                                        "(docs/benchmarks.md).")
    custom_all_reduce_max_bytes: int = _f(128 << 10, "Largest all-reduce (bytes) that "
                                          "--enable-custom-all-reduce sends one-shot; larger ones go "
                                          "to NCCL. Default: where one-shot won alone at TP 2 and 4 on H100s.")
    dist_timeout: Optional[int] = _f(None, "Seconds before the torch.distributed rendezvous and the "
                                     "tensor collectives give up (a dead rank shows up as an error); "
                                     "default: PyTorch's (10 min for NCCL, 30 for gloo).")
    dp_size: int = _f(1, "Data-parallel replicas: full copies of the model behind one front end.")
    load_balance_method: str = _f("round_robin", "How the front end picks a data-parallel replica.",
                                  choices=LOAD_BALANCE_METHODS)
    # Prefill-decode disaggregation (runtime/disaggregation/, docs/server.md)
    disaggregation_mode: str = _f("null", "null: this server prefills and decodes; prefill: run prompts "
                                  "and send their KV cache to decode servers; decode: receive it and "
                                  "decode. Put `sgl router --pd-disaggregation` in front.",
                                  choices=DISAGGREGATION_MODES)
    disaggregation_bootstrap_port: int = _f(8998, "Prefill servers: port of the bootstrap store "
                                            "(a torch.distributed TCPStore) where decode servers pair "
                                            "with this server.")
    disaggregation_transfer_backend: str = _f("auto", "torch.distributed backend that moves the KV "
                                              "cache: nccl between GPUs, gloo on CPU (auto: by device).",
                                              choices=TRANSFER_BACKENDS)
    disaggregation_waiting_timeout: float = _f(300.0, "Seconds a request may wait for its peer server "
                                               "(decode: for the prefill to send the KV cache; prefill: "
                                               "for the decode to take it) before it fails.")
    disaggregation_transfer_timeout: float = _f(60.0, "Seconds one KV transfer (or pairing two servers) "
                                                "may take; past it the transfer fails and the pair "
                                                "reconnects for the next request.")
    # Server
    host: str = _f("127.0.0.1", "HTTP host.")
    port: int = _f(30000, "HTTP port.")
    api_key: Optional[str] = _f(None, "Require 'Authorization: Bearer <key>' (shows in `ps`: "
                                "prefer --api-key-file or --api-key-env).")
    api_key_file: Optional[str] = _f(None, "Read the API key from this file (first line).")
    api_key_env: Optional[str] = _f(None, "Read the API key from the environment variable of this name.")
    max_request_body_bytes: int = _f(32 << 20, "Largest request body accepted; larger is a 413.")
    max_queued_requests: Optional[int] = _f(None, "Most requests waiting in a scheduler's queue; "
                                            "more are refused with 503 and Retry-After.")
    request_timeout: Optional[float] = _f(None, "Seconds a request may run before it is aborted "
                                          "(504, or a final error event when streaming).")
    watchdog_timeout: float = _f(300.0, "Seconds a scheduler may go without stepping (a hung "
                                 "step, a stopped process) before /health says 503 and the "
                                 "requests on it fail with 503.")
    enable_metrics: bool = _f(False, "Serve Prometheus metrics on /metrics.")
    log_level: str = _f("info", "Logging level.")
    log_requests: bool = _f(False, "Log every request and its output.")
    decode_log_interval: int = _f(40, "Log a decode batch line every this many steps.")

    def __post_init__(self) -> None:
        if self.schedule_policy not in SCHEDULE_POLICIES:
            raise ValueError(f"schedule_policy must be one of {SCHEDULE_POLICIES}, got {self.schedule_policy!r}")
        if self.load_format not in LOAD_FORMATS:
            raise ValueError(f"load_format must be one of {LOAD_FORMATS}, got {self.load_format!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.quantization is not None and self.quantization not in QUANTIZATION_METHODS:
            raise ValueError(f"quantization must be one of {QUANTIZATION_METHODS}, got {self.quantization!r}")
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise ValueError(f"kv_cache_dtype must be one of {KV_CACHE_DTYPES}, got {self.kv_cache_dtype!r}")
        if self.tool_call_parser is not None and self.tool_call_parser not in TOOL_CALL_PARSERS:
            raise ValueError(f"tool_call_parser must be one of {TOOL_CALL_PARSERS}, got {self.tool_call_parser!r}")
        if self.reasoning_parser is not None and self.reasoning_parser not in REASONING_PARSERS:
            raise ValueError(f"reasoning_parser must be one of {REASONING_PARSERS}, got {self.reasoning_parser!r}")
        if self.nnodes < 1 or self.tp_size % self.nnodes or not 0 <= self.node_rank < self.nnodes:
            raise ValueError(f"nnodes ({self.nnodes}) must divide tp_size ({self.tp_size}) and "
                             f"node_rank ({self.node_rank}) must be in [0, nnodes)")
        if self.nnodes > 1 and not self.dist_init_addr:
            raise ValueError("dist_init_addr (host:port of node 0) is required when nnodes > 1")
        if self.dp_size < 1:
            raise ValueError(f"dp_size must be >= 1, got {self.dp_size}")
        if self.is_embedding and self.speculative_algorithm:
            raise ValueError("is_embedding does not go with speculative_algorithm (nothing is decoded)")
        if self.load_balance_method not in LOAD_BALANCE_METHODS:
            raise ValueError(f"load_balance_method must be one of {LOAD_BALANCE_METHODS}, "
                             f"got {self.load_balance_method!r}")
        if self.enable_custom_all_reduce and self.nnodes > 1:
            raise ValueError("enable_custom_all_reduce needs the ranks on one node (nnodes 1): "
                             "peer memory does not cross nodes")
        if self.dp_size > 1 and self.nnodes > 1:
            raise ValueError("dp_size > 1 runs every replica on node 0: use nnodes 1")
        self._check_speculative()
        self._check_limits()
        self._check_request_features()
        self._check_kernels_and_parallelism()
        self._check_disaggregation()
        if self.max_total_tokens is not None and self.max_total_tokens < 2:
            raise ValueError("max_total_tokens must be at least 2")
        if self.logits_chunk_size is not None and self.logits_chunk_size < 1:
            raise ValueError(f"logits_chunk_size must be >= 1, got {self.logits_chunk_size}")
        if self.mem_fraction_static is not None and not 0 < self.mem_fraction_static < 1:
            raise ValueError("mem_fraction_static must be in (0, 1)")

    def _check_limits(self) -> None:
        sources = [k for k in ("api_key", "api_key_file", "api_key_env") if getattr(self, k)]
        if len(sources) > 1:
            raise ValueError(f"give one of api_key, api_key_file, api_key_env (got {sources})")
        for name in ("max_request_body_bytes", "max_queued_requests", "request_timeout",
                     "grammar_compile_timeout", "watchdog_timeout"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")

    def _check_request_features(self) -> None:
        if self.return_hidden_states_mode not in (None, *HIDDEN_STATES_MODES):
            raise ValueError(f"return_hidden_states_mode must be one of {HIDDEN_STATES_MODES}, "
                             f"got {self.return_hidden_states_mode!r}")
        if self.enable_priority_scheduling and self.schedule_policy != "fcfs":
            raise ValueError(f"enable_priority_scheduling needs schedule_policy fcfs (priorities order "
                             f"the queue first come first served within a priority, as SGLang's "
                             f"fcfs does), got {self.schedule_policy!r}")
        if self.priority_scheduling_preemption_threshold < 0:
            raise ValueError("priority_scheduling_preemption_threshold must be >= 0, got "
                             f"{self.priority_scheduling_preemption_threshold}")

    @property
    def hidden_states_mode(self) -> Optional[str]:
        """The most hidden state a request may ask for: None, "last" or "full" (an explicit
        --return-hidden-states-mode wins over --enable-return-hidden-states, as in SGLang)."""
        if self.return_hidden_states_mode is not None:
            return self.return_hidden_states_mode
        return "full" if self.enable_return_hidden_states else None

    def resolved_api_key(self) -> Optional[str]:
        """The API key, from whichever of --api-key, --api-key-file, --api-key-env was given
        (read now, at start-up: never at import)."""
        if self.api_key_file:
            with open(self.api_key_file, encoding="utf-8") as f:
                key = f.readline().strip()
        elif self.api_key_env:
            key = os.environ.get(self.api_key_env, "").strip()
        else:
            return self.api_key
        if not key:
            raise ValueError(f"the API key from {self.api_key_file or '$' + self.api_key_env} is empty")
        return key

    def _check_kernels_and_parallelism(self) -> None:
        if self.dist_timeout is not None and self.dist_timeout <= 0:
            raise ValueError(f"dist_timeout must be a positive number of seconds, got {self.dist_timeout}")
        if self.custom_all_reduce_max_bytes < 16:  # the one-shot kernel takes 16-byte multiples
            raise ValueError(f"custom_all_reduce_max_bytes must be at least 16, got "
                             f"{self.custom_all_reduce_max_bytes}")
        if self.enable_deterministic_inference:
            # Each of these computes a row with other rows or in batch-dependent shapes: an
            # all-reduce sized by the batch, verify trees, FP8 GEMMs, batch-tuned kernels.
            conflicts = {"tp_size > 1": self.tp_size > 1,
                         "speculative_algorithm": self.speculative_algorithm is not None,
                         "quantization": self.quantization is not None,
                         "attention_backend torch_native": self.attention_backend == "torch_native"}
            named = [name for name, on in conflicts.items() if on]
            if named:
                raise ValueError(f"enable_deterministic_inference does not go with {', '.join(named)} "
                                 "(those paths are not batch-invariant)")
        if self.gemv_configs is not None:
            from sgl.kernels.gemv_tables import read_table
            try:
                read_table(self.gemv_configs)
            except ValueError as e:
                raise ValueError(f"gemv_configs: {e}") from e

    def _check_speculative(self) -> None:
        algo = self.speculative_algorithm
        if algo is None:
            return
        if algo not in SPECULATIVE_ALGORITHMS:
            raise ValueError(f"speculative_algorithm must be one of {SPECULATIVE_ALGORITHMS}, got {algo!r}")
        if algo in ("EAGLE", "EAGLE3", "STANDALONE") and not self.speculative_draft_model_path:
            raise ValueError(f"speculative_draft_model_path is required for speculative_algorithm={algo}")
        for name in ("speculative_num_steps", "speculative_eagle_topk", "speculative_num_draft_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if algo != "NGRAM":
            steps, topk, tokens = self.speculative_settings()
            most = 1 + topk + (steps - 1) * topk * topk  # the root plus every candidate drafted
            if tokens > most:
                raise ValueError(f"speculative_num_draft_tokens ({tokens}) exceeds what {steps} steps "
                                 f"of topk {topk} can draft ({most})")

    def _check_disaggregation(self) -> None:
        mode = self.disaggregation_mode
        if mode not in DISAGGREGATION_MODES:
            raise ValueError(f"disaggregation_mode must be one of {DISAGGREGATION_MODES}, got {mode!r}")
        if self.disaggregation_transfer_backend not in TRANSFER_BACKENDS:
            raise ValueError(f"disaggregation_transfer_backend must be one of {TRANSFER_BACKENDS}, "
                             f"got {self.disaggregation_transfer_backend!r}")
        if min(self.disaggregation_waiting_timeout, self.disaggregation_transfer_timeout) <= 0:
            raise ValueError("disaggregation_waiting_timeout and disaggregation_transfer_timeout "
                             "must be > 0")
        if not 0 < self.disaggregation_bootstrap_port < 65536:
            raise ValueError(f"disaggregation_bootstrap_port must be in [1, 65535], "
                             f"got {self.disaggregation_bootstrap_port}")
        if mode == "null":
            return
        # One KV pool per server: a pool split over tensor-parallel ranks or replicated per
        # data-parallel replica would need a transfer per rank pair.
        if self.tp_size != 1 or self.dp_size != 1:
            raise ValueError(f"disaggregation_mode {mode} needs tp_size 1 and dp_size 1 "
                             f"(got {self.tp_size} and {self.dp_size}); run more servers instead")
        if self.is_embedding:
            raise ValueError(f"disaggregation_mode {mode} is for generation; is_embedding "
                             "servers run the whole prompt themselves")
        if self.speculative_algorithm not in (None, "NGRAM"):
            raise ValueError(f"disaggregation_mode {mode} works with speculative_algorithm NGRAM "
                             "only: a draft model's KV cache of the prompt is not transferred")

    def transfer_backend(self, device_type: str) -> str:
        """The torch.distributed backend of KV transfers on a device of this type."""
        if self.disaggregation_transfer_backend != "auto":
            return self.disaggregation_transfer_backend
        return "nccl" if device_type == "cuda" else "gloo"

    def speculative_settings(self) -> tuple[int, int, int]:
        """(num_steps, topk, num_draft_tokens) with SGLang's defaults filled in."""
        steps = self.speculative_num_steps or 3
        topk = self.speculative_eagle_topk or 1
        if self.speculative_num_draft_tokens is not None:
            tokens = self.speculative_num_draft_tokens
        elif self.speculative_algorithm == "NGRAM":
            tokens = 8
        else:
            tokens = steps + 1 if topk == 1 else min(2 * steps * topk, 1 + topk + (steps - 1) * topk * topk)
        return steps, topk, tokens

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> "ServerArgs":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise ValueError(f"unknown server argument(s): {', '.join(unknown)}")
        return cls(**kwargs)

    @staticmethod
    def add_cli_args(parser: argparse.ArgumentParser) -> None:
        for f in dataclasses.fields(ServerArgs):
            flag = "--" + f.name.replace("_", "-")
            meta = dict(f.metadata)
            help_text = meta.pop("help", "")
            if f.type in ("bool",) or isinstance(f.default, bool):
                parser.add_argument(flag, action="store_true", help=help_text)
                continue
            kind = meta.pop("type", None) or _cli_type(f)
            parser.add_argument(flag, default=f.default, type=kind, help=help_text, **meta)

    @classmethod
    def from_cli_args(cls, args: argparse.Namespace) -> "ServerArgs":
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def _cli_type(f: dataclasses.Field) -> Any:
    text = str(f.type)
    if "int" in text and "list" not in text:
        return int
    if "float" in text:
        return float
    return str
