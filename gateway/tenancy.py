"""Who is calling: a tenant and, within it, an end user.

Every route that serves a user depends on `caller`, and everything below
(job store reads, the fair queue, flags, re-separations) takes the Caller it
returns, so one tenant never sees another's jobs. No credentials are checked
yet: every caller is the "public" tenant, the open gateway's. The end user
is the `X-User-Id` header set by the product in front of the gateway, and
counts only within its tenant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Header

PUBLIC_TENANT = "public"


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
    x_user_id: Annotated[str | None, Header(description="The end user within the tenant (sticky model and "
                                                        "A/B assignment, fair scheduling)")] = None,
) -> Caller:
    return Caller(PUBLIC_TENANT, x_user_id or None)
