"""`python -m sgl.launch_server [flags]`: see sgl.runtime.server.launch (same as `sgl serve`)."""
from sgl.runtime.server.launch import run_as_command

if __name__ == "__main__":
    run_as_command()
