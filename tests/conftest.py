"""Fixtures shared by the whole suite.

Redis: one real redis-server per test session (started on first use), and a
clean database per test.  Tests that kill or stop a server take a private
one (``private_redis``), so an outage never leaks into another test.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.redisserver import RedisServer


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """The shared server.  Do not kill it: use ``private_redis`` for that."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """URL of the shared server, emptied (FLUSHALL) before the test."""
    if not redis_server.running:   # a test broke the rule above: recover for the next ones
        redis_server.start()
    redis_server.flushall()
    return redis_server.url


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A server of the test's own, free to kill, pause and restart."""
    with RedisServer() as server:
        yield server
