"""The HTTP server: SGLang's native routes and the OpenAI-compatible ones, served by an HTTP
process that talks over ZMQ to a scheduler process and a detokenizer process.

`Runtime` starts one as a subprocess (exported by the frontend as `sgl.Runtime`)."""
from typing import Any

__all__ = ["Runtime"]


def __getattr__(name: str) -> Any:
    if name == "Runtime":  # loaded on first use: importing the server package stays light
        from sgl.runtime.server.runtime import Runtime
        return Runtime
    raise AttributeError(f"module 'sgl.runtime.server' has no attribute {name!r}")
