"""The gateway's database: which one a URL names, its engine, its schema.

SQLite (the embedded default: a WAL file under data_dir, one replica) or
PostgreSQL (psycopg 3, any number of replicas), chosen by `database_url`. The
schema is Alembic's (gateway/storage/migrations/), upgraded when an engine is opened,
so databases made by older gateways keep working; replicas starting together
take turns (a PostgreSQL advisory lock, SQLite's write lock).
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

MIGRATIONS = Path(__file__).with_name("migrations")


async def open_engine(url: str) -> AsyncEngine:
    """An engine on `url` with the schema brought up to date (idempotent; safe with several replicas)."""
    engine = _engine(url)
    async with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Replicas starting together: one upgrades, the others wait and find it done.
            await conn.execute(sa.text("SELECT pg_advisory_xact_lock(7276180)"))
        await conn.run_sync(_upgrade)
    return engine


def database_url(raw: str | None, sqlite_path: Path | None = None) -> str:
    """The SQLAlchemy async URL for a postgresql:// or sqlite:/// URL; empty: the SQLite file sqlite_path."""
    if not raw:
        if sqlite_path is None:
            raise ValueError("no database URL and no SQLite file")
        return f"sqlite+aiosqlite:///{sqlite_path}"
    url = make_url(raw)
    driver = {"postgresql": "postgresql+psycopg", "postgres": "postgresql+psycopg",
              "sqlite": "sqlite+aiosqlite"}.get(url.drivername, url.drivername)
    if driver not in ("postgresql+psycopg", "sqlite+aiosqlite"):
        raise ValueError(f"database_url must be postgresql://... or sqlite:///..., not {url.drivername}://")
    return url.set(drivername=driver).render_as_string(hide_password=False)


def settings_database_url(settings) -> str:
    """The job store the settings name: `database_url`, or when empty the SQLite file under data_dir."""
    raw = settings.database_url.get_secret_value() if settings.database_url else None
    return database_url(raw, settings.db_path)


def _engine(url: str) -> AsyncEngine:
    # Every use here is a context that commits or rolls back, so the pool's own rollback when a
    # connection comes back would be one more round trip for nothing (benchmarks/gateway_jobstore.py).
    if make_url(url).get_backend_name() != "sqlite":
        return create_async_engine(url, pool_pre_ping=True, pool_reset_on_return=None)
    Path(make_url(url).database or "").parent.mkdir(parents=True, exist_ok=True)
    # One connection: SQLite has one writer at a time anyway.
    engine = create_async_engine(url, pool_size=1, max_overflow=0, pool_reset_on_return=None)

    @sa.event.listens_for(engine.sync_engine, "connect")
    def _pragmas(dbapi_connection, _record):
        dbapi_connection.isolation_level = None  # the driver's own implicit BEGIN off: see _begin
        cursor = dbapi_connection.cursor()
        # First: switching a new file to WAL waits for a lock another opener (ab-report, a second
        # gateway, one upgrading the schema) may hold.
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @sa.event.listens_for(engine.sync_engine, "begin")
    def _begin(conn):
        # IMMEDIATE takes the write lock up front, where busy_timeout waits for it: a deferred
        # transaction that reads, then writes, fails at once when another process wrote in between,
        # and two processes upgrading one new file would both create the tables.
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _upgrade(connection: sa.Connection) -> None:
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")
