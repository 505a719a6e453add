"""Tenancy: quota usage counters, pending completion callbacks, WebSocket progress tickets; indexes for a
tenant's active jobs (the concurrent-jobs quota) and its job list.

Revision ID: 0003_tenancy
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_tenancy"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # One row per tenant, quota and period (a minute, a UTC day): replicas count in the same row.
    op.create_table(
        "quota_usage",
        sa.Column("tenant", sa.Text, nullable=False),
        sa.Column("quota", sa.Text, nullable=False),
        sa.Column("period", sa.BigInteger, nullable=False),
        sa.Column("used", sa.Double, nullable=False),
        sa.PrimaryKeyConstraint("tenant", "quota", "period"),
    )
    # A job's callback waits here until the job is terminal, then until delivered (or given up): a
    # restart or a dead replica loses none.
    op.create_table(
        "callbacks",
        sa.Column("id", sa.Text, primary_key=True),  # the delivery's idempotency id, the same on every retry
        sa.Column("job_id", sa.Text, nullable=False, unique=True),
        sa.Column("tenant", sa.Text, nullable=False),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("state", sa.Text, nullable=False),  # waiting | delivered | failed | refused
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt", sa.Double, nullable=False),
        sa.Column("claimed_until", sa.Double),
        sa.Column("payload", sa.Text),
        sa.Column("last_error", sa.Text),
        sa.Column("created", sa.Double, nullable=False),
        sa.Column("updated", sa.Double, nullable=False),
    )
    op.create_index("callbacks_due", "callbacks", ["state", "next_attempt"])
    op.create_table(
        "progress_tickets",
        sa.Column("ticket_sha256", sa.Text, primary_key=True),
        sa.Column("tenant", sa.Text, nullable=False),
        sa.Column("job_id", sa.Text, nullable=False),
        sa.Column("expires", sa.Double, nullable=False),
    )
    op.create_index("jobs_tenant_status", "jobs", ["tenant", "status"])
    op.create_index("jobs_tenant_created", "jobs", ["tenant", "created"])
