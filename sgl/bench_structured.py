"""`python -m sgl.bench_structured`: see sgl.runtime.bench_structured."""
from sgl.runtime.bench_structured import main

if __name__ == "__main__":
    main()
