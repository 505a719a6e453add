"""Jobs, submissions and A/B observations, as the gateway kept them before Alembic.

Idempotent: a SQLite file made by an older gateway already has these tables;
its anonymous idempotency duplicates (from before the COALESCE index) keep
only the first job's key.

Revision ID: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    tables = set(sa.inspect(bind).get_table_names())
    if "jobs" not in tables:
        op.create_table(
            "jobs",
            sa.Column("id", sa.Text, primary_key=True),
            sa.Column("batch_id", sa.Text),
            sa.Column("user_id", sa.Text),
            sa.Column("status", sa.Text, nullable=False),
            sa.Column("model", sa.Text, nullable=False),
            sa.Column("model_version", sa.Text),
            sa.Column("arm", sa.Text),
            sa.Column("params", sa.JSON, nullable=False),
            sa.Column("filename", sa.Text),
            sa.Column("audio_sha", sa.Text),
            sa.Column("idempotency_key", sa.Text),
            sa.Column("created", sa.Double, nullable=False),
            sa.Column("updated", sa.Double, nullable=False),
            sa.Column("started", sa.Double),
            sa.Column("finished", sa.Double),
            sa.Column("chunks_done", sa.Integer, nullable=False, server_default="0"),
            sa.Column("chunks_total", sa.Integer, nullable=False, server_default="0"),
            sa.Column("error", sa.Text),
            sa.Column("error_code", sa.Text),
            sa.Column("result", sa.JSON),
            sa.Column("cached", sa.Boolean, nullable=False, server_default=sa.false()),
            sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        )
    elif bind.dialect.name == "sqlite":
        op.execute("UPDATE jobs SET idempotency_key = NULL WHERE user_id IS NULL AND idempotency_key IS NOT NULL "
                   "AND rowid NOT IN (SELECT MIN(rowid) FROM jobs WHERE user_id IS NULL "
                   "AND idempotency_key IS NOT NULL GROUP BY idempotency_key)")
        op.execute("DROP INDEX IF EXISTS jobs_idempotency")
    op.execute("CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency_owner ON jobs (COALESCE(user_id, ''), "
               "idempotency_key) WHERE idempotency_key IS NOT NULL")
    op.execute("CREATE INDEX IF NOT EXISTS jobs_batch ON jobs (batch_id)")
    op.execute("CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status)")
    if "submissions" not in tables:
        op.create_table(
            "submissions",
            sa.Column("user_id", sa.Text, nullable=False),
            sa.Column("audio_sha", sa.Text, nullable=False),
            sa.Column("model", sa.Text, nullable=False),
            sa.Column("created", sa.Double, nullable=False),
        )
    op.execute("CREATE INDEX IF NOT EXISTS submissions_key ON submissions (user_id, audio_sha, model)")
    if "ab_observations" not in tables:
        op.create_table(
            "ab_observations",
            sa.Column("ts", sa.Double, nullable=False),
            sa.Column("arm", sa.Text, nullable=False),
            sa.Column("model", sa.Text, nullable=False),
            sa.Column("model_version", sa.Text),
            sa.Column("outcome", sa.Text, nullable=False),
            sa.Column("quality", sa.Double),
            sa.Column("latency_s", sa.Double),
        )
