"""`python -m sgl.quantize_fp8`: see sgl.runtime.loader.quantize."""
from sgl.runtime.loader.quantize import main

if __name__ == "__main__":
    main()
