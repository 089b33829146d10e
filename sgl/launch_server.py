"""`python -m sgl.launch_server [flags]`: see sgl.runtime.server.launch (same as `sgl serve`)."""
import sys

from sgl.runtime.server.launch import main

if __name__ == "__main__":
    sys.exit(main())
