"""PostgreSQL fixtures: one server per test session, fresh databases per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator

import pytest

from tests.postgres import drop_database, new_database, throwaway_postgres

URL_ENV = "VITPRUNE_TEST_POSTGRES_URL"


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A SQLAlchemy URL with rights to create databases.

    `$VITPRUNE_TEST_POSTGRES_URL` points at an existing server; otherwise a throw-away local cluster is started.
    """
    if os.environ.get(URL_ENV):
        yield os.environ[URL_ENV]
        return
    with throwaway_postgres() as url:
        yield url


@pytest.fixture
def make_postgres_db(postgres_url: str) -> Iterator[Callable[[], str]]:
    """Factory for databases that belong to this test alone; each call creates one, all are dropped afterwards."""
    created: list[str] = []

    def make() -> str:
        name = f"test_{uuid.uuid4().hex[:16]}"
        url = new_database(postgres_url, name)
        created.append(name)
        return url

    yield make
    for name in created:
        drop_database(postgres_url, name)


@pytest.fixture
def postgres_db_url(make_postgres_db: Callable[[], str]) -> str:
    """URL of an empty database created for this test alone."""
    return make_postgres_db()
