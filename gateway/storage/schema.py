"""The gateway's database schema: every table on one MetaData.

Alembic's revisions (migrations/versions/) create these tables; tests/gateway/storage/test_schema.py
fails when the two disagree (autogenerate's compare, on SQLite and PostgreSQL), so a change here
comes with a revision.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

jobs = sa.Table(
    "jobs", metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("tenant", sa.Text, nullable=False),
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
    sa.Column("chunks_done", sa.Integer, nullable=False),
    sa.Column("chunks_total", sa.Integer, nullable=False),
    sa.Column("error", sa.Text),
    sa.Column("error_code", sa.Text),
    sa.Column("result", sa.JSON),
    sa.Column("cached", sa.Boolean, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("lease_owner", sa.Text),
    sa.Column("lease_expires", sa.Double),
)


submissions = sa.Table(
    "submissions", metadata,
    sa.Column("tenant", sa.Text, nullable=False),
    sa.Column("user_id", sa.Text, nullable=False),
    sa.Column("audio_sha", sa.Text, nullable=False),
    sa.Column("model", sa.Text, nullable=False),
    sa.Column("created", sa.Double, nullable=False),
)


ab_observations = sa.Table(
    "ab_observations", metadata,
    sa.Column("ts", sa.Double, nullable=False),
    sa.Column("arm", sa.Text, nullable=False),
    sa.Column("model", sa.Text, nullable=False),
    sa.Column("model_version", sa.Text),
    sa.Column("outcome", sa.Text, nullable=False),
    sa.Column("quality", sa.Double),
    sa.Column("latency_s", sa.Double),
)


queue_turns = sa.Table(
    "queue_turns", metadata,
    sa.Column("tenant", sa.Text, primary_key=True),
    sa.Column("user_key", sa.Text, primary_key=True),  # the user id, "" for the tenant's anonymous callers
    sa.Column("last_claimed", sa.Double, nullable=False),
)


chunk_plans = sa.Table(
    "chunk_plans", metadata,
    sa.Column("job_id", sa.Text, primary_key=True),
    sa.Column("chunks", sa.JSON, nullable=False),  # [[start, end], ...] in frames
    sa.Column("forced", sa.Text),
)


chunk_checkpoints = sa.Table(
    "chunk_checkpoints", metadata,
    sa.Column("job_id", sa.Text, primary_key=True),
    sa.Column("idx", sa.Integer, primary_key=True),
    sa.Column("meta", sa.JSON, nullable=False),
    sa.Column("created", sa.Double, nullable=False),
)


callbacks = sa.Table(
    "callbacks", metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("job_id", sa.Text, nullable=False, unique=True),
    sa.Column("tenant", sa.Text, nullable=False),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("state", sa.Text, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("next_attempt", sa.Double, nullable=False),
    sa.Column("claimed_until", sa.Double),
    sa.Column("payload", sa.Text),
    sa.Column("last_error", sa.Text),
    sa.Column("created", sa.Double, nullable=False),
    sa.Column("updated", sa.Double, nullable=False),
)


quota_usage = sa.Table(
    "quota_usage", metadata,
    sa.Column("tenant", sa.Text, primary_key=True),
    sa.Column("quota", sa.Text, primary_key=True),
    sa.Column("period", sa.BigInteger, primary_key=True),
    sa.Column("used", sa.Double, nullable=False),
)


progress_tickets = sa.Table(
    "progress_tickets", metadata,
    sa.Column("ticket_sha256", sa.Text, primary_key=True),
    sa.Column("tenant", sa.Text, nullable=False),
    sa.Column("job_id", sa.Text, nullable=False),
    sa.Column("expires", sa.Double, nullable=False),
)


listening_verdicts = sa.Table(
    "listening_verdicts", metadata,
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

# Indexes the revisions create: the ones the hot queries use (claims, a tenant's listing, due callbacks).
sa.Index("jobs_status", jobs.c.status)
sa.Index("jobs_tenant_batch", jobs.c.tenant, jobs.c.batch_id)
sa.Index("jobs_tenant_status", jobs.c.tenant, jobs.c.status)
sa.Index("jobs_tenant_created", jobs.c.tenant, jobs.c.created)
sa.Index("jobs_idempotency_tenant", jobs.c.tenant, sa.func.coalesce(jobs.c.user_id, ""), jobs.c.idempotency_key,
         unique=True)
sa.Index("submissions_key", submissions.c.tenant, submissions.c.user_id, submissions.c.audio_sha,
         submissions.c.model)
sa.Index("callbacks_due", callbacks.c.state, callbacks.c.next_attempt)
sa.Index("listening_verdicts_by_tenant", listening_verdicts.c.tenant, listening_verdicts.c.model,
         listening_verdicts.c.created)
