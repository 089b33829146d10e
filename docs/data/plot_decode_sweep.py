"""Draws docs/decode_step_vs_batch.png from docs/data/h100_decode_sweep.jsonl (overlap scheduling,
the default) and h100_decode_sweep_sync.jsonl (the earlier run, before overlap scheduling) beside
the roofline of the Llama-3.1-8B shape on an H100 (3.0 TB/s measured copy rate, 770 TFLOP/s bf16
matmul)."""
import json
import os

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
WEIGHT_BYTES = 16.06e9          # bf16 weights, embeddings and LM head included
MATMUL_PARAMS = 6.98e9 + 0.525e9  # decoder-layer matmuls + LM head (per token, x2 FLOPs)
KV_BYTES_PER_TOKEN = 2 * 32 * 8 * 128 * 2
BW, FLOPS = 3.0e12, 770e12


def roofline_ms(bs: int, ctx: int) -> float:
    mem = (WEIGHT_BYTES + bs * ctx * KV_BYTES_PER_TOKEN) / BW
    compute = 2 * MATMUL_PARAMS * bs / FLOPS
    return 1e3 * max(mem, compute)


def main() -> None:
    rows = [json.loads(line) for line in open(os.path.join(HERE, "h100_decode_sweep.jsonl"))]
    before = [json.loads(line) for line in open(os.path.join(HERE, "h100_decode_sweep_sync.jsonl"))]
    bs = [r["batch_size"] for r in rows]
    ctx = [r["input_len"] + r["output_len"] // 2 for r in rows]  # mean context while decoding
    measured = [1e3 * r["median_decode_latency"] for r in rows]
    roof = [roofline_ms(b, c) for b, c in zip(bs, ctx)]
    plt.figure(figsize=(6, 4))
    plt.plot([r["batch_size"] for r in before], [1e3 * r["median_decode_latency"] for r in before],
             "s:", color="gray", label="before overlap scheduling")
    plt.plot(bs, measured, "o-", label="sgl decode step (median), overlap scheduling")
    plt.plot(bs, roof, "k--", label="roofline: max(bytes/BW, FLOPs/rate)")
    plt.xscale("log", base=2)
    plt.xlabel("batch size")
    plt.ylabel("ms per decode step")
    plt.title("Llama-3.1-8B shape, bf16, H100 80GB, CUDA graphs")
    plt.legend()
    plt.grid(alpha=0.3)
    plt.tight_layout()
    plt.savefig(os.path.join(HERE, "..", "decode_step_vs_batch.png"), dpi=110)
    for b, c, m, r in zip(bs, ctx, measured, roof):
        print(f"| {b} | {m:.2f} | {r:.2f} | {r / m:.0%} |")


if __name__ == "__main__":
    main()
