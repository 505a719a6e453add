"""Listening-room verdicts: a person's judgement of a canary against its stable, by ear.

One row per verdict (the track compared, who: tenant and user, better / same /
worse, a note, the agreement and quality estimates the page showed), kept in
the job store's database (table `listening_verdicts` in storage/schema.py,
migration 0005_listening_verdicts), so a verdict outlives the replica that took it.
Each one also counts in `musicsplit_gateway_listening_verdicts_total`
(model, canary_version, verdict: the versions are the ones the gateway's
canary directory published, never free text), beside the canary's automatic
analysis.
"""

from __future__ import annotations

import time
import uuid
from typing import Literal

import sqlalchemy as sa
from prometheus_client import Counter
from pydantic import BaseModel, Field
from sqlalchemy.ext.asyncio import AsyncEngine

from musicsplit.gateway.storage.schema import listening_verdicts

VERDICTS = ("better", "same", "worse")
Judgement = Literal["better", "same", "worse"]


LISTENING_VERDICTS = Counter("musicsplit_gateway_listening_verdicts_total",
                             "Listening-room verdicts on a canary against its stable (better / same / worse)",
                             ["model", "canary_version", "verdict"])


class VerdictIn(BaseModel):
    """What the listening room sends once a person has listened."""

    model: str = Field(min_length=1, max_length=200, examples=["htdemucs"])
    stable_version: str = Field(min_length=1, max_length=200, examples=["4.0.1"])
    canary_version: str = Field(min_length=1, max_length=200, examples=["4.1.0"])
    verdict: Judgement = Field(description="The canary compared with the stable: better, same or worse")
    note: str = Field("", max_length=2000, description="What was heard (free text)")
    track: str = Field(min_length=1, max_length=300, description="The track compared (its file name)",
                       examples=["song.flac"])
    track_sha256: str | None = Field(None, pattern="^[0-9a-f]{64}$", description="SHA-256 of the track's bytes")
    agreement_db: dict[str, float] = Field(default_factory=dict, max_length=16,
                                           description="SDR of the canary's stem against the stable's, per stem")
    stable_quality: float | None = Field(None, ge=0, le=1, description="The stable's quality estimate")
    canary_quality: float | None = Field(None, ge=0, le=1, description="The canary's quality estimate")


class Verdict(VerdictIn):
    id: str
    created: float = Field(examples=[1764030000.0])
    tenant: str
    user_id: str | None = None


class VerdictList(BaseModel):
    verdicts: list[Verdict] = Field(description="Newest first")
    counts: dict[str, dict[str, dict[str, int]]] = Field(
        description="model -> canary version -> verdict -> count, over the tenant's verdicts",
        examples=[{"htdemucs": {"4.1.0": {"better": 3, "same": 5, "worse": 1}}}])


class VerdictStore:
    """Verdicts in the job store's database (its engine; the migration made the table)."""

    def __init__(self, engine: AsyncEngine):
        self.engine = engine

    async def record(self, v: VerdictIn, tenant: str, user_id: str | None) -> Verdict:
        verdict = Verdict(**v.model_dump(), id=uuid.uuid4().hex, created=time.time(), tenant=tenant,
                          user_id=user_id)
        async with self.engine.begin() as conn:
            await conn.execute(sa.insert(listening_verdicts).values(**verdict.model_dump()))
        LISTENING_VERDICTS.labels(model=v.model, canary_version=v.canary_version, verdict=v.verdict).inc()
        return verdict

    async def list(self, tenant: str, *, model: str | None = None, limit: int = 100) -> VerdictList:
        """The tenant's verdicts, newest first (at most `limit`), and its counts over all of them."""
        t = listening_verdicts
        where = [t.c.tenant == tenant] + ([t.c.model == model] if model else [])
        rows = sa.select(t).where(*where).order_by(t.c.created.desc(), t.c.id).limit(limit)
        counts = (sa.select(t.c.model, t.c.canary_version, t.c.verdict, sa.func.count())
                  .where(*where).group_by(t.c.model, t.c.canary_version, t.c.verdict))
        async with self.engine.connect() as conn:
            verdicts = [Verdict(**dict(r._mapping)) for r in await conn.execute(rows)]
            totals: dict[str, dict[str, dict[str, int]]] = {}
            for m, version, verdict, n in await conn.execute(counts):
                totals.setdefault(m, {}).setdefault(version, dict.fromkeys(VERDICTS, 0))[verdict] = n
        return VerdictList(verdicts=verdicts, counts=totals)
