"""Shared fixtures of the live-engine tests: the Redis server that CI starts (skipped without one)."""

from __future__ import annotations

import asyncio
import os

import pytest

from aif_sim.live.storage import redis_reachable

REDIS_URL_VARIABLE = "AIF_SIM_REDIS_URL"


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The URL of a Redis server that answers PING, from $AIF_SIM_REDIS_URL; the test is skipped without one."""
    url = os.environ.get(REDIS_URL_VARIABLE)
    if not url:
        pytest.skip(f"no Redis server: ${REDIS_URL_VARIABLE} is not set; .ci/run starts one")
    reason = asyncio.run(redis_reachable(url))
    if reason is not None:
        pytest.skip(f"no Redis server at {url}: {reason}; .ci/run starts one")
    return url
