"""Alembic environment of the journal: run by :func:`journal.db.migrate` with an open connection."""

from __future__ import annotations

from alembic import context

from journal.schema import VERSION_TABLE, metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - the journal always hands one over
    raise RuntimeError("journal migrations run through journal.db.migrate(engine)")

context.configure(connection=connection, target_metadata=metadata, render_as_batch=True,
                  version_table=VERSION_TABLE)
with context.begin_transaction():
    context.run_migrations()
