from __future__ import annotations

import uuid
from typing import Iterator

import pytest

from support import Herald, token


@pytest.fixture(scope="module")
def herald() -> Iterator[Herald]:
    """One server per test module: tests in a module use distinct job ids."""
    h = Herald()
    h.start()
    try:
        yield h
    finally:
        h.stop()


@pytest.fixture(scope="module")
def worker() -> str:
    """A worker's token: reports jobs, reads them and their events."""
    return token("worker-1", "worker")


@pytest.fixture
def job_id(request: pytest.FixtureRequest) -> str:
    return f"{request.node.name[:60].replace('[', '-').replace(']', '')}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def anyio_backend() -> str:
    # The async flavour is built on asyncio.
    return "asyncio"
