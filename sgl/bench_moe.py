"""`python -m sgl.bench_moe`: the fused MoE kernels against their roofline and against a
per-expert loop in torch, at the Qwen3-30B-A3B shape (128 experts, top 8, hidden 2048, expert
intermediate 768 / TP) on one GPU.

    python -m sgl.bench_moe [--batches 1,64,256,2048] [--tp-size 1] [--sweep]

Rows:
  - `fused_experts`: the grouped GEMMs, SiLU-and-mul and the top-k sum (sgl.kernels.moe), timed
    as sgl/bench_kernels.py times its kernels (copies of the call on their own buffers in
    one CUDA graph, L2 flushed, median replay time per call);
  - `moe layer`: the same plus the Triton router (softmax, top-k, renormalize);
  - `torch per-expert loop`: sgl.kernels.moe.fused_experts_ref on the GPU, eager (it reads the
    experts in use back to the host), the baseline the kernel is held against.
Roofline: the fewest bytes (the weights of the experts the batch routes to, read once, plus x
and the output) over the HBM rate, or the FLOPs (2 * tokens * top_k * 3 * I * H) over the bf16
matrix rate, whichever is longer; `% roof` is that floor over the measured time. Routing is
drawn at random (every expert equally likely), as dummy weights route. --sweep times other
launch configurations and prints the best per batch in the form of fused_moe.CONFIGS.
"""
from __future__ import annotations

import argparse
import itertools

import torch
import triton.testing

from sgl.bench_kernels import Row, _time
from sgl.kernels.moe import fused_experts, fused_experts_ref, select_experts
from sgl.kernels.triton import fused_moe

NUM_EXPERTS, TOP_K, HIDDEN, MOE_INTER = 128, 8, 2048, 768  # Qwen3-30B-A3B
DTYPE = torch.bfloat16
# 192 configurations (64 at batch 1, where BLOCK_N 16 and deeper pipelines are the candidates
# for filling the SMs): minutes with compilation; --batches narrows.
SWEEP = {"BLOCK_M": (16, 32, 64), "BLOCK_N": (16, 32, 64, 128), "BLOCK_K": (64, 128),
         "GROUP_M": (1, 8), "num_warps": (4, 8), "num_stages": (3, 4)}


def _inputs(num_tokens: int, inter: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator(device="cuda").manual_seed(seed)

    def randn(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return torch.randn(*shape, generator=g, device="cuda") * scale

    logits = randn(num_tokens, NUM_EXPERTS)
    weights, ids = select_experts(logits, TOP_K, True)
    return {"x": randn(num_tokens, HIDDEN).to(DTYPE), "logits": logits.to(DTYPE),
            "w13": randn(NUM_EXPERTS, 2 * inter, HIDDEN, scale=HIDDEN ** -0.5).to(DTYPE),
            "w2": randn(NUM_EXPERTS, HIDDEN, inter, scale=inter ** -0.5).to(DTYPE),
            "weights": weights, "ids": ids}


def _floor(num_tokens: int, inter: int, ids: torch.Tensor) -> tuple[float, float]:
    """(bytes, FLOPs) the call cannot do without."""
    used = int(ids.unique().numel())
    nbytes = used * 3 * inter * HIDDEN * DTYPE.itemsize + 2 * num_tokens * HIDDEN * DTYPE.itemsize
    return float(nbytes), 2.0 * num_tokens * TOP_K * 3 * inter * HIDDEN


def _shape(num_tokens: int, inter: int) -> str:
    return f"T={num_tokens} E={NUM_EXPERTS} k={TOP_K} I={inter}"


def experts_row(num_tokens: int, inter: int, config: tuple[int, ...] | None = None) -> Row:
    nbytes, flops = _floor(num_tokens, inter, _inputs(num_tokens, inter, seed=0)["ids"])
    seeds = itertools.count(1)

    def make():
        b = _inputs(num_tokens, inter, next(seeds))
        return lambda: fused_moe.fused_experts(b["x"], b["w13"], b["w2"], b["weights"], b["ids"],
                                               config=config)
    return Row("fused_experts", _shape(num_tokens, inter), _time(make, nbytes), nbytes, flops)


def layer_rows(num_tokens: int, inter: int) -> list[Row]:
    """The MoE layer's kernels with the router, and the torch per-expert loop."""
    b = _inputs(num_tokens, inter, seed=0)
    nbytes, flops = _floor(num_tokens, inter, b["ids"])
    seeds = itertools.count(1)

    def make():
        c = _inputs(num_tokens, inter, next(seeds))

        def call():
            weights, ids = select_experts(c["logits"], TOP_K, True)
            return fused_experts(c["x"], c["w13"], c["w2"], weights, ids)
        return call

    ref_ms = triton.testing.do_bench(
        lambda: fused_experts_ref(b["x"], b["w13"], b["w2"], b["weights"], b["ids"]),
        warmup=5, rep=50, return_mode="median")
    shape = _shape(num_tokens, inter)
    return [Row("moe layer (+ router)", shape, _time(make, nbytes), nbytes, flops),
            Row("torch per-expert loop", shape, ref_ms, nbytes, flops)]


def check(num_tokens: int, inter: int) -> float:
    """Relative error of the kernels against the reference (float32 math on the same inputs)."""
    b = _inputs(num_tokens, inter, seed=0)
    out = fused_experts(b["x"], b["w13"], b["w2"], b["weights"], b["ids"]).double()
    ref = fused_experts_ref(b["x"].float(), b["w13"].float(), b["w2"].float(), b["weights"],
                            b["ids"]).double()
    return ((out - ref).norm() / ref.norm()).item()


def sweep(num_tokens: int, inter: int) -> tuple[tuple[int, ...], float]:
    """The fastest launch configuration for this batch and its time (ms)."""
    best: tuple[tuple[int, ...], float] = (fused_moe.pick_config(num_tokens), float("inf"))
    for config in itertools.product(*SWEEP.values()):
        if config[0] > max(16, triton.next_power_of_2(num_tokens * TOP_K)):
            continue  # blocks far larger than the routed pairs only add padding
        try:
            ms = experts_row(num_tokens, inter, config).ms
        except Exception as exc:  # noqa: BLE001 (out of shared memory etc.: skip the config)
            print(f"  {config}: {type(exc).__name__}")
            continue
        if ms < best[1]:
            best = (config, ms)
    return best


def decode_floor(model_path: str = "qwen3-30b-a3b-dummy") -> str:
    """The bytes one batch-1 decode token reads from the weights (every dense weight, the router,
    top_k of each layer's experts, the LM head; bf16) and their time at the HBM rate: the
    roofline of `bench_one_batch --model-path qwen3-30b-a3b-dummy --load-format dummy`."""
    from sgl.bench_kernels import HBM_BYTES_PER_S
    from sgl.runtime.loader import _load_config, resolve_model_path
    from sgl.runtime.models.registry import get_model_class, resolve_architecture
    config, _ = _load_config(resolve_model_path(model_path), "dummy")
    with torch.device("meta"):
        model = get_model_class(resolve_architecture(config))(config)
    num_read = 0.0
    for name, param in model.named_parameters():
        if "embed_tokens" in name and not model.tie_word_embeddings:
            continue  # one row a token
        share = config.num_experts_per_tok / param.shape[0] if ".experts." in name else 1.0
        num_read += param.numel() * share
    nbytes = num_read * DTYPE.itemsize
    ms = 1e3 * nbytes / HBM_BYTES_PER_S
    return (f"{model_path}: a batch-1 decode token reads {nbytes / 1e9:.2f} GB of weights: "
            f"{ms:.2f} ms at {HBM_BYTES_PER_S / 1e12:.1f} TB/s (60% of the roofline: "
            f"{ms / 0.6:.2f} ms a step)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", default="1,64,256,2048", help="tokens per call, comma-separated")
    parser.add_argument("--tp-size", type=int, default=1, help="split the expert intermediate size")
    parser.add_argument("--sweep", action="store_true", help="search launch configurations")
    parser.add_argument("--decode-floor", action="store_true",
                        help="print the weight bytes of a batch-1 decode token and exit (no GPU)")
    args = parser.parse_args()
    if args.decode_floor:
        print(decode_floor())
        return
    if not torch.cuda.is_available():
        raise SystemExit("bench_moe needs a CUDA GPU")
    inter = MOE_INTER // args.tp_size
    batches = [int(b) for b in args.batches.split(",")]
    print(f"{torch.cuda.get_device_name()}: Qwen3-30B-A3B MoE, bf16, TP {args.tp_size}")
    for num_tokens in batches:
        err = check(num_tokens, inter)
        print(f"T={num_tokens}: relative error vs reference {err:.1e}")
        if err > 1.5e-2:
            raise SystemExit("the kernels disagree with the reference")
        for row in [experts_row(num_tokens, inter), *layer_rows(num_tokens, inter)]:
            print(row.line())
    if args.sweep:
        print("best configurations (fused_moe.CONFIGS form):")
        for num_tokens in batches:
            config, ms = sweep(num_tokens, inter)
            print(f"    ({num_tokens}, {config}),  # {ms * 1e3:.1f} us")


if __name__ == "__main__":
    main()
