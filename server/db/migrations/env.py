"""Alembic environment: runs on the engine the service hands over (see server.db.engine.migrate)."""

from alembic import context
from sqlalchemy import text

from server.db.engine import VERSION_TABLE
from server.db.models import Base

engine = context.config.attributes["engine"]
with engine.begin() as connection:
    if connection.dialect.name == "postgresql":
        # Processes starting together (an API and its workers) must not create the same tables at once.
        connection.execute(text("SELECT pg_advisory_xact_lock(7270001)"))
    context.configure(connection=connection, target_metadata=Base.metadata, version_table=VERSION_TABLE)
    with context.begin_transaction():
        context.run_migrations()
