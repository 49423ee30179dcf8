"""The service database: engine set-up, migrations, and the database clock.

SQLite (the embedded default) runs in WAL mode with a busy timeout, so the API reads while
a worker writes and concurrent writers wait instead of failing. The schema is owned by Alembic
(`server/db/migrations`); its version table is named apart from Optuna's own `alembic_version`,
because both live in the same database.
"""

from __future__ import annotations

import time
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import DateTime, Engine, create_engine, event
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import sessionmaker
from sqlalchemy.sql.expression import FunctionElement

__all__ = ["VERSION_TABLE", "db_after", "db_now", "make_engine", "make_sessions", "migrate"]

VERSION_TABLE = "vp_alembic_version"
MIGRATIONS = Path(__file__).parent / "migrations"
BUSY_TIMEOUT_MS = 60_000


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    # pre_ping: a connection the database dropped (restart, network) is replaced, not used.
    return create_engine(url, pool_pre_ping=True)


def _sqlite_pragmas(connection, _record) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_sessions(engine: Engine) -> sessionmaker:
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


def migrate(engine: Engine, attempts: int = 5) -> None:
    """Bring the schema to the newest revision (a no-op when it is there already).

    On PostgreSQL concurrent migrations wait on a lock (see migrations/env.py). SQLite has no such
    lock: a process that lost the race to create a table tries again and finds the schema done.
    """
    for attempt in range(attempts):
        try:
            command.upgrade(alembic_config(engine), "head")
            return
        except (OperationalError, IntegrityError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.5 * (attempt + 1))


class db_now(FunctionElement):
    """The database's current time (UTC on SQLite)."""

    type = DateTime(timezone=True)
    inherit_cache = True


class db_after(FunctionElement):
    """The database's current time plus a number of seconds."""

    type = DateTime(timezone=True)
    inherit_cache = True


@compiles(db_now, "sqlite")
def _now_sqlite(element, compiler, **kw) -> str:
    return "CURRENT_TIMESTAMP"


@compiles(db_now)
def _now_default(element, compiler, **kw) -> str:
    return "now()"


@compiles(db_after, "sqlite")
def _after_sqlite(element, compiler, **kw) -> str:
    # Same text format as CURRENT_TIMESTAMP, so stored times compare as strings.
    return f"datetime('now', ({compiler.process(element.clauses, **kw)}) || ' seconds')"


@compiles(db_after)
def _after_default(element, compiler, **kw) -> str:
    return f"now() + make_interval(secs => {compiler.process(element.clauses, **kw)})"
