"""`python -m sgl.bench_all_reduce`: see sgl.runtime.bench_all_reduce."""
from sgl.runtime.bench_all_reduce import main

if __name__ == "__main__":
    main()
