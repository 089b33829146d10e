"""Draws the speedup of the full system over the independent-calls baseline per workload, from
result files of `python -m sgl.bench_programs --result-file ...` (one bar per device and backend):

    python docs/data/plot_programs.py docs/data/programs_cpu.json [more.json ...] \\
        --out docs/programs_speedup.png

Also prints each file's summary as the Markdown rows docs/benchmarks.md quotes."""
import argparse
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def series(paths: list[str]) -> list[tuple[str, dict]]:
    """(label, summary) per device and backend, in the order given; files of the same device and
    backend (a run split by workload) are merged."""
    out: dict[str, dict] = {}
    for path in paths:
        with open(path) as f:
            result = json.load(f)
        device = result["meta"]["device"].split(",")[0]
        for backend, body in result["backends"].items():
            out.setdefault(f"{device}, {backend}", {}).update(body.get("summary", {}))
    return list(out.items())


def draw(all_series: list[tuple[str, dict]], out_path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = list(dict.fromkeys(w for _, summary in all_series for w in summary))
    width = 0.8 / max(len(all_series), 1)
    fig, ax = plt.subplots(figsize=(max(8, 0.9 * len(workloads)), 4.5))
    for k, (label, summary) in enumerate(all_series):
        xs = [i + (k - (len(all_series) - 1) / 2) * width for i in range(len(workloads))]
        ys = [(summary.get(w) or {}).get("speedup_vs_independent") or 0 for w in workloads]
        bars = ax.bar(xs, ys, width, label=label)
        ax.bar_label(bars, labels=[f"{y:.1f}" if y else "" for y in ys], fontsize=7, padding=1)
    ax.axhline(1, color="black", linewidth=0.8)
    ax.axhline(5, color="gray", linestyle="--", linewidth=0.8, label="few-shot target (5x)")
    ax.set_xticks(range(len(workloads)), workloads, rotation=30, ha="right")
    ax.set_ylabel("programs/s over independent calls")
    ax.set_title("sgl programs vs the same calls sent independently (cache off)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+")
    parser.add_argument("--out", default=os.path.join(HERE, "..", "programs_speedup.png"))
    args = parser.parse_args()
    all_series = series(args.results)
    draw(all_series, args.out)
    from sgl.bench_programs.report import markdown_table
    for label, summary in all_series:
        print(f"\n{label}\n\n{markdown_table(summary)}")


if __name__ == "__main__":
    main()
