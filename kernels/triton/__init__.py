"""Triton kernels. Each module's wrapper checks shapes, strides and dtypes and raises on CPU
tensors (there is no fallback here: the dispatching functions in `sgl.kernels.*` choose between
these and the torch references)."""
