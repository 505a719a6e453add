"""Alembic environment: the job store hands over its connection (database._upgrade).

A new revision: copy the newest file in versions/, number it next, set its
`down_revision` to the previous one. Every revision runs on SQLite and
PostgreSQL alike (tests/gateway/test_jobstore.py runs both).
"""

from alembic import context

context.configure(connection=context.config.attributes["connection"], target_metadata=None)
with context.begin_transaction():
    context.run_migrations()
