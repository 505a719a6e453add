"""Listening-room verdicts (gateway/experiments/verdicts.py): a person's better / same / worse on a canary.

Revision ID: 0005_listening_verdicts
Revises: 0004_leases
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_listening_verdicts"
down_revision = "0004_leases"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "listening_verdicts",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("created", sa.Double, nullable=False),
        sa.Column("tenant", sa.Text, nullable=False),
        sa.Column("user_id", sa.Text),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("stable_version", sa.Text, nullable=False),
        sa.Column("canary_version", sa.Text, nullable=False),
        sa.Column("verdict", sa.Text, nullable=False),
        sa.Column("note", sa.Text, nullable=False),
        sa.Column("track", sa.Text, nullable=False),
        sa.Column("track_sha256", sa.Text),
        sa.Column("agreement_db", sa.JSON, nullable=False),
        sa.Column("stable_quality", sa.Double),
        sa.Column("canary_quality", sa.Double),
    )
    op.create_index("listening_verdicts_by_tenant", "listening_verdicts", ["tenant", "model", "created"])


def downgrade() -> None:
    op.drop_index("listening_verdicts_by_tenant", "listening_verdicts")
    op.drop_table("listening_verdicts")
