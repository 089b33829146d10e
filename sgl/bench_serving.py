"""`python -m sgl.bench_serving`: see sgl.runtime.bench_serving."""
from sgl.runtime.bench_serving import main

if __name__ == "__main__":
    main()
