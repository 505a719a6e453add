"""Alembic environment: the job store hands over its connection (database._upgrade).

A new revision: copy the newest file in versions/, number it next, set its
`down_revision` to the previous one. Every revision runs on SQLite and
PostgreSQL alike (tests/gateway/storage/test_jobstore.py runs both), and their result must match
schema.py (tests/gateway/storage/test_schema.py).
"""

from alembic import context

from musicsplit.gateway.storage.schema import metadata

context.configure(connection=context.config.attributes["connection"], target_metadata=metadata)
with context.begin_transaction():
    context.run_migrations()
