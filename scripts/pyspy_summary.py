"""Summarise a py-spy raw profile (`py-spy record -f raw --threads`): samples per thread, then
the frames that take the most samples (inclusive, and as the innermost frame) in the threads
whose name contains --thread (default: the scheduler's).

    python scripts/pyspy_summary.py profile.raw [--thread sgl-scheduler] [--top 40]"""
from __future__ import annotations

import argparse
import collections


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("raw")
    ap.add_argument("--thread", default="sgl-scheduler")
    ap.add_argument("--top", type=int, default=40)
    args = ap.parse_args()
    threads, inclusive, leaf = collections.Counter(), collections.Counter(), collections.Counter()
    for line in open(args.raw):
        stack, _, count = line.rstrip().rpartition(" ")
        frames, n = stack.split(";"), int(count)
        threads[frames[0]] += n
        if args.thread in frames[0]:
            leaf[frames[-1]] += n
            for f in set(frames[1:]):
                inclusive[f] += n
    print("samples per thread:")
    for name, n in threads.most_common(12):
        print(f"  {n:8d}  {name}")
    print(f"inclusive, threads named *{args.thread}*:")
    for name, n in inclusive.most_common(args.top):
        print(f"  {n:8d}  {name}")
    print("innermost:")
    for name, n in leaf.most_common(args.top // 2):
        print(f"  {n:8d}  {name}")


if __name__ == "__main__":
    main()
