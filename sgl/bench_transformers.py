"""`python -m sgl.bench_transformers`: see sgl.runtime.bench_transformers."""
from sgl.runtime.bench_transformers import main

if __name__ == "__main__":
    main()
