"""What the job store costs a job: the gateway's own statements, timed side by side.

A job's life in the store is create, queued -> running, one update per chunk
(the runner publishes the row it returns) and running -> succeeded. Measured
for the async SQLAlchemy store on SQLite and on PostgreSQL, and for the plain
synchronous sqlite3 statements the gateway used before (UPDATE then SELECT,
on the event loop), so the cost of the async engine is a ratio, not a guess.

    python benchmarks/gateway_jobstore.py [--jobs 200] [--chunks 10] [--postgres-url URL]

Without --postgres-url a PostgreSQL server is started in a temp dir (Debian's
postgresql, as the tests do).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from musicsplit.gateway.storage.database import database_url  # noqa: E402
from musicsplit.gateway.storage.jobstore import SqlJobStore  # noqa: E402


async def lifecycle_async(store: SqlJobStore, chunks: int) -> float:
    start = time.perf_counter()
    job = await store.create(tenant="public", model="htdemucs", params={"output_format": "wav"}, user_id="u",
                             arm="control", filename="a.wav", audio_sha="sha")
    await store.transition(job.id, ("queued",), status="running", started=time.time())
    for done in range(1, chunks + 1):
        await store.update(job.id, chunks_done=done, chunks_total=chunks)
    await store.transition(job.id, ("running",), status="succeeded", result={"stems": ["vocals"]},
                           finished=time.time())
    return time.perf_counter() - start


def lifecycle_sqlite3(db: sqlite3.Connection, chunks: int) -> float:
    """The pre-SQLAlchemy gateway's statements: autocommit, UPDATE then SELECT for the published row."""
    start = time.perf_counter()
    job_id, now = uuid.uuid4().hex, time.time()
    db.execute("INSERT INTO jobs (id, status, model, params, user_id, arm, filename, audio_sha, created, updated)"
               " VALUES (?,?,?,?,?,?,?,?,?,?)", (job_id, "queued", "htdemucs", json.dumps({"output_format": "wav"}),
                                                 "u", "control", "a.wav", "sha", now, now))
    db.execute("UPDATE jobs SET status='running', started=?, updated=? WHERE id=? AND status IN ('queued')",
               (time.time(), time.time(), job_id))
    db.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
    for done in range(1, chunks + 1):
        db.execute("UPDATE jobs SET chunks_done=?, chunks_total=?, updated=? WHERE id=?",
                   (done, chunks, time.time(), job_id))
        db.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
    db.execute("UPDATE jobs SET status='succeeded', result=?, finished=?, updated=? WHERE id=? AND status IN "
               "('running')", (json.dumps({"stems": ["vocals"]}), time.time(), time.time(), job_id))
    db.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
    return time.perf_counter() - start


async def measure_async(url: str, jobs: int, chunks: int) -> list[float]:
    store = await SqlJobStore.open(url)
    try:
        await lifecycle_async(store, chunks)  # warm: connections, statement caches
        return [await lifecycle_async(store, chunks) for _ in range(jobs)]
    finally:
        await store.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--chunks", type=int, default=10)
    parser.add_argument("--postgres-url")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="jobstore-bench-"))
    server = None
    pg_url = args.postgres_url
    if not pg_url:
        from tests.fixtures.postgres import Postgres

        server = Postgres.start()
        pg_url = server.database("bench")
    try:
        sqlite_url = database_url(f"sqlite:///{tmp / 'async.sqlite3'}")
        plain_path = tmp / "plain.sqlite3"
        asyncio.run(_make_schema(plain_path))  # the same tables, for the plain statements
        db = sqlite3.connect(str(plain_path), isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        lifecycle_sqlite3(db, args.chunks)
        results: dict[str, list[float]] = {name: [] for name in ("sqlite3 sync", "SQLite async", "PostgreSQL async")}
        # Interleaved rounds, so machine load falls on all three alike.
        rounds = 4
        for _ in range(rounds):
            n = args.jobs // rounds
            results["sqlite3 sync"] += [lifecycle_sqlite3(db, args.chunks) for _ in range(n)]
            results["SQLite async"] += asyncio.run(measure_async(sqlite_url, n, args.chunks))
            results["PostgreSQL async"] += asyncio.run(measure_async(database_url(pg_url), n, args.chunks))
        db.close()
    finally:
        if server:
            server.stop()

    ops = args.chunks + 3
    print(f"job store: {args.jobs} jobs of {args.chunks} chunks each ({ops} statements a job: create, "
          f"2 transitions, {args.chunks} progress updates), medians")
    print(f"{'store':<20} {'ms per job':>10} {'ms per statement':>17}")
    base = statistics.median(results["sqlite3 sync"])
    for name, times in results.items():
        med = statistics.median(times)
        print(f"{name:<20} {med * 1e3:>10.2f} {med / ops * 1e3:>17.3f}   x{med / base:.2f} vs sqlite3 sync")
    return 0


async def _make_schema(path: Path) -> None:
    store = await SqlJobStore.open(database_url(f"sqlite:///{path}"))
    await store.close()


if __name__ == "__main__":
    sys.exit(main())
