"""Authentication does not block the event loop: token lookups run in a worker thread and valid tokens
are remembered for a bounded time, so a revoked token stops working within ``auth_cache_seconds``
(at once on the process that revoked it). Queries are counted on the real databases."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import pytest
from sqlalchemy import event, update

from server.db.models import ApiToken
from server.security import Actor, TokenCache, hash_token
from tests.server.conftest import ALL_DBS, Server, ServerFactory, assert_error


@contextmanager
def token_queries(server: Server) -> Iterator[list[bool]]:
    """Record each query of the ``api_token`` table: True when it ran on a thread with a running event
    loop (which it must not)."""
    seen: list[bool] = []

    def on_execute(_conn, _cursor, statement: str, *_args) -> None:  # type: ignore[no-untyped-def]
        if "api_token" in statement:
            try:
                asyncio.get_running_loop()
                seen.append(True)
            except RuntimeError:
                seen.append(False)

    engine = server.db.engine
    event.listen(engine, "before_cursor_execute", on_execute)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", on_execute)


class Clock:
    """A clock the test moves by hand (the cache's timer), so expiry needs no sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def revoke_elsewhere(server: Server, name: str) -> None:
    """Revoke ``name`` straight in the database, as another worker process would."""
    with server.db.session() as session:
        session.execute(update(ApiToken).where(ApiToken.name == name).values(revoked_at=datetime.now(UTC)))


@pytest.mark.parametrize("db_kind", ALL_DBS)
def test_the_hook_queries_the_database_once_per_token_and_never_on_the_event_loop(
    app_client: Server,
) -> None:
    token = app_client.token("uploader", "busy")
    with token_queries(app_client) as seen:
        for _ in range(10):
            assert app_client.api("GET", "/api/annotations", token=token).status_code == 200
    assert seen == [False], "one lookup for ten calls, in a worker thread"


@pytest.mark.parametrize("db_kind", ALL_DBS)
def test_a_token_revoked_on_another_worker_stops_working_within_the_cache_time(
    server_factory: ServerFactory,
) -> None:
    server = server_factory(auth_cache_seconds=5)
    clock = Clock()
    server.app.state.parts.tokens = TokenCache(5, timer=clock)
    token = server.token("uploader", "leaver")
    assert server.api("GET", "/api/annotations", token=token).status_code == 200
    revoke_elsewhere(server, "leaver")
    clock.now += 4.9  # within the documented bound it may still pass (this process has not asked)
    assert server.api("GET", "/api/annotations", token=token).status_code == 200
    clock.now += 0.2  # past auth_cache_seconds: asked again, refused
    assert_error(server.api("GET", "/api/annotations", token=token), 401, "invalid_token")


@pytest.mark.parametrize("db_kind", ALL_DBS)
def test_a_token_revoked_through_the_api_stops_at_once_on_that_process(app_client: Server) -> None:
    token = app_client.token("uploader", "leaver")
    other = app_client.token("uploader", "stayer")
    for t in (token, other):
        assert app_client.api("GET", "/api/annotations", token=t).status_code == 200
    assert app_client.api("DELETE", "/api/tokens/leaver").status_code == 200
    assert_error(app_client.api("GET", "/api/annotations", token=token), 401, "invalid_token")
    with token_queries(app_client) as seen:  # the other token is still remembered
        assert app_client.api("GET", "/api/annotations", token=other).status_code == 200
    assert seen == []


def test_a_zero_cache_time_asks_the_database_every_call(server_factory: ServerFactory) -> None:
    server = server_factory(auth_cache_seconds=0)
    token = server.token("uploader")
    with token_queries(server) as seen:
        for _ in range(3):
            assert server.api("GET", "/api/annotations", token=token).status_code == 200
    assert seen == [False, False, False]
    revoke_elsewhere(server, "test-uploader")
    assert_error(server.api("GET", "/api/annotations", token=token), 401, "invalid_token")


def test_unknown_tokens_are_not_remembered(app_client: Server) -> None:
    with token_queries(app_client) as seen:
        for _ in range(3):
            assert_error(app_client.api("GET", "/api/annotations", token="not-a-token"), 401, "invalid_token")
    assert seen == [False, False, False]
    assert len(app_client.app.state.parts.tokens) == 0


def test_the_cache_is_bounded_in_size() -> None:
    cache = TokenCache(60, maxsize=2)
    for n in range(3):
        cache.put(hash_token(f"t{n}"), Actor(f"user{n}", "uploader"))
    assert len(cache) == 2
    assert cache.get(hash_token("t0")) is None  # the oldest went first
    assert cache.get(hash_token("t2")) == Actor("user2", "uploader")
