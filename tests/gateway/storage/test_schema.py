"""The tables the gateway's code uses (schema.py) are the tables its Alembic revisions make:
autogenerate's comparison of a freshly migrated database with the one MetaData finds nothing,
on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from musicsplit.gateway.storage.schema import metadata


# SQLite's reflection cannot see the COALESCE index; PostgreSQL's run compares it.
@pytest.mark.filterwarnings("ignore:Skipped unsupported reflection of expression-based index")
async def test_models_and_migrations_agree(job_store):
    def diff(connection):
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return compare_metadata(context, metadata)

    async with job_store.engine.connect() as conn:
        differences = await conn.run_sync(diff)
    assert differences == [], ("schema.py and migrations/versions/ disagree; add a revision for: "
                               f"{differences}")
