"""Alembic environment: run by ``reelgen.store.db.Database.upgrade`` with an open connection.

There is no alembic.ini: the caller passes the connection (already inside its transaction, holding
the migration lock) through ``config.attributes["connection"]``.
"""

from __future__ import annotations

from alembic import context

from reelgen.store.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through reelgen.store.db.Database.upgrade (or `reelgen db upgrade`)")

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
