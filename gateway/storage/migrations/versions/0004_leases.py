"""The shared job queue: leases on running jobs, fair turns per owner, chunk plans and checkpoints.

A running job is held by one replica until `lease_expires` (database clock, unix seconds);
rows from before leases have none and are taken over by the first replica that looks.

Revision ID: 0004_leases
Revises: 0003_tenancy
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_leases"
down_revision = "0003_tenancy"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("lease_owner", sa.Text))
    op.add_column("jobs", sa.Column("lease_expires", sa.Double))
    op.create_table(
        "queue_turns",
        sa.Column("tenant", sa.Text, nullable=False),
        sa.Column("user_key", sa.Text, nullable=False),
        sa.Column("last_claimed", sa.Double, nullable=False),
        sa.PrimaryKeyConstraint("tenant", "user_key"),
    )
    op.create_table(
        "chunk_plans",
        sa.Column("job_id", sa.Text, primary_key=True),
        sa.Column("chunks", sa.JSON, nullable=False),
        sa.Column("forced", sa.Text),
    )
    op.create_table(
        "chunk_checkpoints",
        sa.Column("job_id", sa.Text, nullable=False),
        sa.Column("idx", sa.Integer, nullable=False),
        sa.Column("meta", sa.JSON, nullable=False),
        sa.Column("created", sa.Double, nullable=False),
        sa.PrimaryKeyConstraint("job_id", "idx"),
    )
