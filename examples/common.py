"""Backend choice shared by the examples: the bundled model in-process by default, or
`--backend http://host:port` for a running `sgl serve` (or SGLang) server."""
from __future__ import annotations

import argparse

import sgl


def parse_args(description: str, extra=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--backend", default="local",
                        help="'local' (in-process bundled model) or a server URL, e.g. http://127.0.0.1:30000")
    if extra:
        extra(parser)
    return parser.parse_args()


def make_backend(spec: str):
    if spec == "local":
        return sgl.LocalBackend(sgl.Engine())
    return sgl.RuntimeEndpoint(spec)


def setup(description: str, extra=None) -> argparse.Namespace:
    """Parse the command line and install the chosen backend as the default."""
    args = parse_args(description, extra)
    sgl.set_default_backend(make_backend(args.backend))
    return args
