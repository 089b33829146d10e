"""Fixtures of the language tests on the in-process engine (one engine per test module)."""
from __future__ import annotations

import pytest

import sgl


@pytest.fixture(scope="module")
def engine():
    from sgl.runtime.engine import Engine
    eng = Engine()
    yield eng
    eng.shutdown()


@pytest.fixture(scope="module")
def backend(engine):
    return sgl.LocalBackend(engine)
