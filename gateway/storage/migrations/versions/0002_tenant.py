"""Every job and submission belongs to a tenant; idempotency keys and batches are per tenant.

Rows from before tenants belong to "public" (the open gateway's tenant).

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("tenant", sa.Text, nullable=False, server_default="public"))
    op.add_column("submissions", sa.Column("tenant", sa.Text, nullable=False, server_default="public"))
    op.execute("DROP INDEX IF EXISTS jobs_idempotency_owner")
    op.execute("CREATE UNIQUE INDEX jobs_idempotency_tenant ON jobs (tenant, COALESCE(user_id, ''), "
               "idempotency_key) WHERE idempotency_key IS NOT NULL")
    op.execute("DROP INDEX IF EXISTS jobs_batch")
    op.create_index("jobs_tenant_batch", "jobs", ["tenant", "batch_id"])
    op.execute("DROP INDEX IF EXISTS submissions_key")
    op.create_index("submissions_key", "submissions", ["tenant", "user_id", "audio_sha", "model"])
