from sgl.runtime.executor.attention.base import (
    AttentionBackend,
    get_attention_backend,
    register_attention_backend,
)

__all__ = ["AttentionBackend", "get_attention_backend", "register_attention_backend"]
