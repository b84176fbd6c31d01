from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    # The supervisor runs on asyncio (anyio.run's default); its tests run where it runs.
    return "asyncio"
