"""`python -m sgl.bench_offline_throughput`: see sgl.runtime.bench_offline_throughput."""
from sgl.runtime.bench_offline_throughput import main

if __name__ == "__main__":
    main()
