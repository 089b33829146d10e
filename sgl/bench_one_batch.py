"""`python -m sgl.bench_one_batch`: see sgl.runtime.bench_one_batch."""
from sgl.runtime.bench_one_batch import main

if __name__ == "__main__":
    main()
