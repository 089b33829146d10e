"""`python -m sgl.router [flags]`: see sgl.runtime.router (same as `sgl router`)."""
import sys

from sgl.runtime.router import main

if __name__ == "__main__":
    sys.exit(main())
