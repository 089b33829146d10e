"""Process-wide settings of the frontend."""
from __future__ import annotations

from typing import Any


class GlobalConfig:
    def __init__(self) -> None:
        self.default_backend: Any = None
        # run_batch traces the program and caches its constant prefix when longer than this
        self.enable_precache_with_tracing = True
        self.precache_min_chars = 64
        # Sent with every generate request (SGLang's defaults)
        self.skip_special_tokens_in_output = True
        self.spaces_between_special_tokens_in_out = True
        # Seconds to wait for an HTTP backend to answer one request
        self.request_timeout_s = 600.0


global_config = GlobalConfig()
