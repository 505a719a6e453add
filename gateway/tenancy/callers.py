"""Who is calling: a tenant and, within it, an end user.

Every route that serves a user depends on `caller`, and everything below
(job store reads, the fair queue, flags, re-separations, quotas) takes the
Caller it returns, so one tenant never sees another's jobs. The tenant comes
from the credentials (auth.py): an API key of the tenants file or an OIDC
token; an open gateway's every caller is the tenant "public". The end user
is the `X-User-Id` header set by the tenant's product in front of the
gateway, and counts only within its tenant.

WebSockets: browsers cannot set an Authorization header on one, so an
authenticated POST issues a progress ticket: a random token good once, for
one job, for a minute, kept (hashed) in the job store so any replica can
redeem it. Non-browser clients may send the Authorization header instead.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Annotated

import sqlalchemy as sa
from fastapi import Header, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncEngine

from musicsplit.errors import Unauthorized
from musicsplit.gateway.storage.schema import progress_tickets
from musicsplit.gateway.tenancy.tenants import PUBLIC_TENANT

__all__ = ["PUBLIC_TENANT", "Caller", "ProgressTickets", "caller", "websocket_caller"]

bearer = HTTPBearer(auto_error=False, scheme_name="bearer", bearerFormat="API key or OIDC JWT",
                    description="An API key of the tenant (the tenants file holds its SHA-256), or an OIDC access "
                                "token whose tenant claim names the tenant. Not needed on an open gateway.")


@dataclass(frozen=True)
class Caller:
    tenant: str
    user_id: str | None = None

    @property
    def owner(self) -> str:
        """The fair queue's unit: one tenant's user (anonymous callers of a tenant share one place)."""
        return f"{self.tenant}/{self.user_id or 'anonymous'}"

    @property
    def flag_user(self) -> str | None:
        """The flags' userId (sticky A/B arms); None for an anonymous caller (no stickiness)."""
        return f"{self.tenant}/{self.user_id}" if self.user_id else None

    @classmethod
    def of(cls, job) -> "Caller":
        """The caller who submitted a job (its row's tenant and user)."""
        return cls(job.tenant, job.user_id)


async def caller(
    request: Request,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
    x_user_id: Annotated[str | None, Header(description="The end user within the tenant (sticky model and "
                                                        "A/B assignment, fair scheduling)")] = None,
) -> Caller:
    """The authenticated caller of a request, counted against its tenant's requests-per-minute quota."""
    service = request.app.state.service
    principal = await service.auth.authenticate(request.headers.get("authorization"))
    request.state.tenant = principal.tenant  # the tenant's request metrics (app.py) read it
    await service.quotas.count_request(principal.tenant)
    return Caller(principal.tenant, x_user_id or None)


async def websocket_caller(service, headers, ticket: str | None, job_id: str) -> Caller:
    """The caller of a progress WebSocket: a ticket for this job, or the Authorization header."""
    if ticket:
        tenant = await service.tickets.redeem(ticket, job_id)
        if tenant is None:
            raise Unauthorized("the progress ticket is unknown, used, expired or for another job; get a new one "
                               f"with POST /v1/separations/{job_id}/progress-ticket")
    else:
        tenant = (await service.auth.authenticate(headers.get("authorization"))).tenant
    await service.quotas.count_request(tenant)
    return Caller(tenant, headers.get("x-user-id") or None)




class ProgressTickets:
    def __init__(self, engine: AsyncEngine, ttl_s: float):
        self.engine = engine
        self.ttl_s = ttl_s

    async def issue(self, tenant: str, job_id: str) -> tuple[str, float]:
        """(a new ticket for one job's progress, when it expires)."""
        ticket = secrets.token_urlsafe(32)
        expires = time.time() + self.ttl_s
        async with self.engine.begin() as conn:
            await conn.execute(sa.insert(progress_tickets).values(
                ticket_sha256=_digest(ticket), tenant=tenant, job_id=job_id, expires=expires))
        return ticket, expires

    async def redeem(self, ticket: str, job_id: str) -> str | None:
        """The tenant the ticket was issued to, if it is for this job and not expired; it is used up."""
        async with self.engine.begin() as conn:
            row = (await conn.execute(sa.delete(progress_tickets).where(
                progress_tickets.c.ticket_sha256 == _digest(ticket))
                .returning(progress_tickets.c.tenant, progress_tickets.c.job_id, progress_tickets.c.expires))).first()
        if row is None or row.job_id != job_id or row.expires < time.time():
            return None
        return row.tenant

    async def prune(self) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(sa.delete(progress_tickets).where(progress_tickets.c.expires < time.time()))


def _digest(ticket: str) -> str:
    return hashlib.sha256(ticket.encode()).hexdigest()
