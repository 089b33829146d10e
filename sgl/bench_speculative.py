"""`python -m sgl.bench_speculative`: see sgl.runtime.bench_speculative."""
from sgl.runtime.bench_speculative import main

if __name__ == "__main__":
    main()
