"""Job persistence in SQLite: jobs survive a gateway restart and never silently vanish.

A job's row moves queued -> running -> succeeded | failed | cancelled, and
later -> expired when its result files are deleted after the retention
time (the row stays, saying so). Jobs found queued or running at start-up
are queued again (their input is on disk). The same database records A/B
observations and submissions for the re-separation rate.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TERMINAL = ("succeeded", "failed", "cancelled", "expired")

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    batch_id TEXT,
    user_id TEXT,
    status TEXT NOT NULL,
    model TEXT NOT NULL,
    model_version TEXT,
    arm TEXT,
    params TEXT NOT NULL,
    filename TEXT,
    audio_sha TEXT,
    idempotency_key TEXT,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    started REAL,
    finished REAL,
    chunks_done INTEGER NOT NULL DEFAULT 0,
    chunks_total INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    error_code TEXT,
    result TEXT,
    cached INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0
);
-- One job per (user, idempotency key), anonymous users included: UNIQUE treats NULLs as distinct,
-- so the owner is indexed as COALESCE(user_id, ''). Databases made before this index may hold
-- anonymous duplicates: all but the first lose their key, then the old index goes.
UPDATE jobs SET idempotency_key = NULL
    WHERE user_id IS NULL AND idempotency_key IS NOT NULL AND rowid NOT IN (
        SELECT MIN(rowid) FROM jobs WHERE user_id IS NULL AND idempotency_key IS NOT NULL
        GROUP BY idempotency_key);
DROP INDEX IF EXISTS jobs_idempotency;
CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency_owner ON jobs(COALESCE(user_id, ''), idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_batch ON jobs(batch_id);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status);
CREATE TABLE IF NOT EXISTS submissions (
    user_id TEXT NOT NULL, audio_sha TEXT NOT NULL, model TEXT NOT NULL, created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS submissions_key ON submissions(user_id, audio_sha, model);
CREATE TABLE IF NOT EXISTS ab_observations (
    ts REAL NOT NULL, arm TEXT NOT NULL, model TEXT NOT NULL, model_version TEXT,
    outcome TEXT NOT NULL, quality REAL, latency_s REAL
);
"""


@dataclass
class Job:
    id: str
    status: str
    model: str
    params: dict
    user_id: str | None = None
    batch_id: str | None = None
    model_version: str | None = None
    arm: str | None = None
    filename: str | None = None
    audio_sha: str | None = None
    idempotency_key: str | None = None
    created: float = 0.0
    updated: float = 0.0
    started: float | None = None
    finished: float | None = None
    chunks_done: int = 0
    chunks_total: int = 0
    error: str | None = None
    error_code: str | None = None
    result: dict = field(default_factory=dict)
    cached: bool = False
    attempts: int = 0

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def progress(self) -> float:
        if self.status == "succeeded":
            return 1.0
        return self.chunks_done / self.chunks_total if self.chunks_total else 0.0


def _row_to_job(row: sqlite3.Row) -> Job:
    d = dict(row)
    d["params"] = json.loads(d["params"] or "{}")
    d["result"] = json.loads(d["result"] or "{}")
    d["cached"] = bool(d["cached"])
    return Job(**d)


class JobStore:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _exec(self, sql: str, args: tuple = ()) -> sqlite3.Cursor:
        with self._lock:
            return self._db.execute(sql, args)

    def create(self, *, model: str, params: dict, user_id: str | None, arm: str | None,
               filename: str | None, audio_sha: str | None, batch_id: str | None = None,
               idempotency_key: str | None = None, model_version: str | None = None) -> Job:
        now = time.time()
        job = Job(id=uuid.uuid4().hex, status="queued", model=model, params=params, user_id=user_id,
                  batch_id=batch_id, arm=arm, filename=filename, audio_sha=audio_sha,
                  idempotency_key=idempotency_key, created=now, updated=now, model_version=model_version)
        self._exec(
            "INSERT INTO jobs (id, batch_id, user_id, status, model, model_version, arm, params, filename,"
            " audio_sha, idempotency_key, created, updated) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (job.id, batch_id, user_id, job.status, model, model_version, arm, json.dumps(params), filename,
             audio_sha, idempotency_key, now, now),
        )
        return job

    def get(self, job_id: str) -> Job | None:
        row = self._exec("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _row_to_job(row) if row else None

    def by_idempotency(self, user_id: str | None, key: str) -> Job | None:
        row = self._exec("SELECT * FROM jobs WHERE COALESCE(user_id, '') = ? AND idempotency_key = ?",
                         (user_id or "", key)).fetchone()
        return _row_to_job(row) if row else None

    def batch(self, batch_id: str) -> list[Job]:
        rows = self._exec("SELECT * FROM jobs WHERE batch_id = ? ORDER BY created, rowid", (batch_id,)).fetchall()
        return [_row_to_job(r) for r in rows]

    def update(self, job_id: str, **fields: Any) -> None:
        if not fields:
            return
        fields["updated"] = time.time()
        for k in ("params", "result"):
            if k in fields:
                fields[k] = json.dumps(fields[k])
        cols = ", ".join(f"{k} = ?" for k in fields)
        self._exec(f"UPDATE jobs SET {cols} WHERE id = ?", (*fields.values(), job_id))

    def transition(self, job_id: str, from_status: tuple[str, ...], **fields: Any) -> bool:
        """Update only if the job is still in one of `from_status` (a cancel wins races)."""
        fields["updated"] = time.time()
        for k in ("params", "result"):
            if k in fields:
                fields[k] = json.dumps(fields[k])
        cols = ", ".join(f"{k} = ?" for k in fields)
        marks = ",".join("?" * len(from_status))
        cur = self._exec(f"UPDATE jobs SET {cols} WHERE id = ? AND status IN ({marks})",
                         (*fields.values(), job_id, *from_status))
        return cur.rowcount == 1

    def unfinished(self) -> list[Job]:
        rows = self._exec("SELECT * FROM jobs WHERE status IN ('queued', 'running') ORDER BY created").fetchall()
        return [_row_to_job(r) for r in rows]

    def expired(self, older_than: float) -> list[Job]:
        rows = self._exec(
            "SELECT * FROM jobs WHERE status IN ('succeeded', 'failed', 'cancelled') AND finished < ?",
            (older_than,)).fetchall()
        return [_row_to_job(r) for r in rows]

    # -- re-separation and A/B -------------------------------------------------

    def record_submission(self, user_id: str, audio_sha: str, model: str, window_s: float) -> bool:
        """Record a submission; True if the same user sent the same audio within the window."""
        now = time.time()
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM submissions WHERE user_id = ? AND audio_sha = ? AND model = ? AND created >= ?",
                (user_id, audio_sha, model, now - window_s)).fetchone()
            self._db.execute("INSERT INTO submissions VALUES (?,?,?,?)", (user_id, audio_sha, model, now))
            self._db.execute("DELETE FROM submissions WHERE created < ?", (now - window_s,))
        return row is not None

    def record_observation(self, arm: str, model: str, model_version: str | None, outcome: str,
                           quality: float | None, latency_s: float | None) -> None:
        self._exec("INSERT INTO ab_observations VALUES (?,?,?,?,?,?,?)",
                   (time.time(), arm, model, model_version, outcome, quality, latency_s))

    def observations(self, since: float = 0.0) -> list[dict]:
        rows = self._exec("SELECT * FROM ab_observations WHERE ts >= ?", (since,)).fetchall()
        return [dict(r) for r in rows]
