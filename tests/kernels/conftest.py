from __future__ import annotations

import pytest

from sgl.kernels import linear as linear_mod


@pytest.fixture
def gemv_settings():
    """configure_gemv is process-wide: every test that sets it leaves the defaults behind."""
    yield linear_mod.configure_gemv
    linear_mod.configure_gemv()
