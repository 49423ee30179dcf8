from __future__ import annotations

from collections.abc import Callable

import sqlalchemy

PUBLIC_TABLES = sqlalchemy.text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")


def test_row_survives_across_connections(postgres_db_url: str) -> None:
    writer = sqlalchemy.create_engine(postgres_db_url)
    try:
        with writer.begin() as conn:
            conn.execute(sqlalchemy.text("CREATE TABLE trial (id serial PRIMARY KEY, note text NOT NULL)"))
            conn.execute(sqlalchemy.text("INSERT INTO trial (note) VALUES (:note)"), {"note": "héllo"})
    finally:
        writer.dispose()

    reader = sqlalchemy.create_engine(postgres_db_url)
    try:
        with reader.connect() as conn:
            rows = conn.execute(sqlalchemy.text("SELECT id, note FROM trial")).all()
            version = int(conn.execute(sqlalchemy.text("SHOW server_version_num")).scalar_one())
    finally:
        reader.dispose()
    assert [tuple(row) for row in rows] == [(1, "héllo")]
    assert version >= 150000


def test_databases_are_isolated(postgres_db_url: str, make_postgres_db: Callable[[], str]) -> None:
    other_url = make_postgres_db()
    assert sqlalchemy.make_url(other_url).database != sqlalchemy.make_url(postgres_db_url).database

    first, second = sqlalchemy.create_engine(postgres_db_url), sqlalchemy.create_engine(other_url)
    try:
        with first.begin() as conn:
            conn.execute(sqlalchemy.text("CREATE TABLE only_here (x int)"))
        with first.connect() as conn:
            assert conn.execute(PUBLIC_TABLES).scalars().all() == ["only_here"]
        with second.connect() as conn:
            assert conn.execute(PUBLIC_TABLES).scalars().all() == []
    finally:
        first.dispose()
        second.dispose()
