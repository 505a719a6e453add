"""Completion callbacks: when a job is terminal, POST its view to the URL it was submitted with.

    POST <callback_url>
    Content-Type: application/json
    X-Musicsplit-Webhook-Id: <delivery id: the same on every retry; dedupe on it>
    X-Musicsplit-Webhook-Timestamp: <unix seconds>
    X-Musicsplit-Webhook-Signature: sha256=<hex HMAC-SHA256(webhook_secret, "<timestamp>.<body>")>

    <the job view, as GET /v1/separations/{id} answers it>

At least once: a delivery lives in the job store from the submit on, and is
due once its job is terminal; any replica claims it (a short lease), posts,
and marks it delivered, or schedules the next try with exponential backoff
until `callback_max_attempts`. A restart or a dead replica loses none; the
schedule lives in the database, not in a process's retry loop.

Server-side request forgery: the URL's host must be on the tenant's
`callback_hosts`; at delivery the host is resolved, every address must be
public (no loopback, private, link-local, shared, multicast or reserved
range; IPv4-mapped, NAT64, 6to4 and IPv4-compatible forms unwrapped, NAT64
local-use and Teredo refused) unless `callback_allow_private`,
and the POST goes to the address that was checked (no second lookup), with
no redirects followed.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import random
import socket
import time
from urllib.parse import urlsplit

import httpx
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from musicsplit.errors import BadRequest
from musicsplit.gateway import metrics
from musicsplit.gateway.storage.jobstore import TERMINAL, SeparationJob
from musicsplit.gateway.storage.schema import callbacks, jobs
from musicsplit.gateway.api.schemas import job_view
from musicsplit.gateway.settings import GatewaySettings
from musicsplit.gateway.tenancy.tenants import Tenant

log = logging.getLogger(__name__)


ID_HEADER = "X-Musicsplit-Webhook-Id"
TIMESTAMP_HEADER = "X-Musicsplit-Webhook-Timestamp"
SIGNATURE_HEADER = "X-Musicsplit-Webhook-Signature"
BATCH = 32  # deliveries claimed per round
NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052 well-known prefix: the IPv4 address is the last 32 bits
NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")  # RFC 8215 local-use: a translator's own, refused
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")  # deprecated ::a.b.c.d (and ::, ::1)


class Refused(Exception):
    """The URL may not be called (host not allowed, or resolves to a non-public address)."""


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The signature header's value for a body sent at `timestamp`."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def is_public(address: str) -> bool:
    """A public unicast address, whatever IPv6 form carries an IPv4 one: IPv4-mapped, NAT64, 6to4 and
    IPv4-compatible literals are unwrapped and their IPv4 address checked; NAT64 local-use and Teredo
    (which reach wherever their operator routes them) are refused."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if ip.version == 6:
        if ip in NAT64_LOCAL or ip.teredo is not None:
            return False
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif ip in NAT64 or ip in IPV4_COMPATIBLE:
            ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        elif ip.sixtofour is not None:
            ip = ip.sixtofour
    return ip.is_global and not ip.is_multicast


def host_allowed(host: str, allowed: list[str]) -> bool:
    host = host.lower().rstrip(".")
    return any(host == a or (a.startswith("*.") and host.endswith(a[1:])) for a in allowed)


def check_callback_url(url: str, tenant: Tenant | None, tenant_name: str, *, allow_private: bool) -> str:
    """The URL if this tenant may be called back there; BadRequest saying why not."""
    if len(url) > 2048:
        raise BadRequest("callback_url is longer than 2048 characters")
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise BadRequest("callback_url must be an absolute http(s) URL, e.g. https://hooks.example.com/musicsplit")
    try:
        parts.port
    except ValueError:
        raise BadRequest(f"callback_url has an invalid port: {parts.netloc!r}") from None
    if parts.username or parts.password:
        raise BadRequest("callback_url must not carry credentials; callbacks are signed instead "
                         f"({SIGNATURE_HEADER})")
    if tenant is None or not tenant.callback_hosts:
        raise BadRequest(f"tenant {tenant_name!r} has no callback_hosts in the tenants file, so it cannot be "
                         "called back; ask the gateway's operator to add your hosts")
    host = parts.hostname
    if not host_allowed(host, tenant.callback_hosts):
        raise BadRequest(f"callback_url host {host!r} is not one of tenant {tenant_name!r}'s callback_hosts "
                         f"{tenant.callback_hosts}")
    if not allow_private:
        try:
            private = not is_public(host)
        except ValueError:  # a name: resolved, and its addresses checked, at every delivery
            private = False
        if private:
            raise BadRequest(f"callback_url host {host!r} is not a public address; callbacks go to public hosts only")
    return url


class CallbackDeliverer:
    """Registers callbacks at submit and delivers them once their jobs are terminal."""

    def __init__(self, engine: AsyncEngine, tenants: dict[str, Tenant], settings: GatewaySettings):
        self.engine = engine
        self.tenants = tenants
        self.settings = settings
        # No pooled connections: one verified for one host name must not carry another's callback
        # (two tenants' hosts may resolve to one address).
        self.http = httpx.AsyncClient(timeout=settings.callback_timeout_s, follow_redirects=False,
                                      limits=httpx.Limits(max_keepalive_connections=0))
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        for outcome in ("delivered", "retried", "failed", "refused"):
            metrics.CALLBACKS.labels(outcome=outcome)

    def wake(self) -> None:
        """A job finished here: look for due deliveries now rather than at the next poll."""
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="callback-deliverer")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.http.aclose()

    async def _loop(self) -> None:
        while True:
            try:
                await self.deliver_due()
            except Exception:
                log.exception("callback delivery round failed")
            try:
                await asyncio.wait_for(self._wake.wait(), self.settings.callback_poll_s)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()

    async def deliver_due(self) -> int:
        """Claim and deliver what is due now; how many were attempted."""
        now = time.time()
        async with self.engine.connect() as conn:
            rows = (await conn.execute(
                sa.select(callbacks).join(jobs, jobs.c.id == callbacks.c.job_id).where(
                    callbacks.c.state == "waiting", callbacks.c.next_attempt <= now, jobs.c.status.in_(TERMINAL),
                    sa.or_(callbacks.c.claimed_until.is_(None), callbacks.c.claimed_until < now))
                .order_by(callbacks.c.next_attempt).limit(BATCH))).all()
        mine = [row for row in rows if await self._claim(row.id, now)]
        # Each delivery on its own: one that fails in an unforeseen way counts as a failed try of that
        # delivery (retried with backoff, then failed), and never holds up or fails the others.
        await asyncio.gather(*(self._attempt(row) for row in mine), return_exceptions=True)
        return len(mine)

    async def _attempt(self, row) -> None:
        try:
            await self._deliver(row)
        except Exception as exc:
            log.exception("callback %s for job %s: delivery failed unexpectedly", row.id, row.job_id)
            await self._retry(row, row.payload, f"internal error: {type(exc).__name__}: {exc}")

    async def _claim(self, delivery: str, now: float) -> bool:
        # The lease covers one attempt; a replica that dies mid-attempt leaves it to another after that.
        async with self.engine.begin() as conn:
            result = await conn.execute(sa.update(callbacks).where(
                callbacks.c.id == delivery, callbacks.c.state == "waiting",
                sa.or_(callbacks.c.claimed_until.is_(None), callbacks.c.claimed_until < now))
                .values(claimed_until=now + self.settings.callback_timeout_s + 30.0))
            return result.rowcount == 1

    async def _deliver(self, row) -> None:
        tenant = self.tenants.get(row.tenant)
        payload = row.payload or await self._payload(row.job_id)
        try:
            if tenant is None or tenant.webhook_secret is None:
                raise Refused(f"tenant {row.tenant!r} has no webhook_secret any more")
            check_callback_url(row.url, tenant, row.tenant, allow_private=self.settings.callback_allow_private)
            target, host = await self._target(row.url)
        except (Refused, BadRequest) as exc:
            await self._finish(row, "refused", payload, getattr(exc, "message", None) or str(exc))
            return
        except OSError as exc:  # the name does not resolve (now): try again later
            await self._retry(row, payload, f"cannot resolve the host: {exc}")
            return
        timestamp = int(time.time())
        body = payload.encode()
        headers = {"Content-Type": "application/json", "Host": host, ID_HEADER: row.id,
                   TIMESTAMP_HEADER: str(timestamp),
                   SIGNATURE_HEADER: sign(tenant.webhook_secret.get_secret_value(), timestamp, body)}
        try:
            r = await self.http.post(target, content=body, headers=headers,
                                     extensions={"sni_hostname": urlsplit(row.url).hostname})
            error = None if r.is_success else f"HTTP {r.status_code}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        if error is None:
            await self._finish(row, "delivered", payload, None)
        else:
            await self._retry(row, payload, error)

    async def _target(self, url: str) -> tuple[str, str]:
        """(the URL with the host replaced by its checked address, the Host header)."""
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        addresses = list(dict.fromkeys(info[4][0] for info in infos))
        if not self.settings.callback_allow_private:
            private = [a for a in addresses if not is_public(a)]
            if private:
                raise Refused(f"{host} resolves to {', '.join(private)}, not a public address")
        netloc = parts.netloc.rsplit("@", 1)[-1]
        return str(httpx.URL(url).copy_with(host=addresses[0])), netloc

    async def _payload(self, job_id: str) -> str:
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(jobs).where(jobs.c.id == job_id))).one()
        return job_view(SeparationJob.from_dict(dict(row._mapping)), self.settings.results_ttl_s).model_dump_json()

    async def _retry(self, row, payload: str | None, error: str) -> None:
        attempts = row.attempts + 1
        if attempts >= self.settings.callback_max_attempts:
            log.warning("callback %s for job %s failed after %d attempts: %s", row.id, row.job_id, attempts, error)
            await self._finish(row, "failed", payload, error)
            return
        s = self.settings
        wait = min(s.callback_retry_max_wait_s, s.callback_retry_initial_s * 2 ** (attempts - 1))
        wait *= random.uniform(0.8, 1.2)  # replicas and tenants do not retry in step
        metrics.CALLBACKS.labels(outcome="retried").inc()
        await self._update(row.id, attempts=attempts, next_attempt=time.time() + wait, claimed_until=None,
                           payload=payload, last_error=error)

    async def _finish(self, row, state: str, payload: str | None, error: str | None) -> None:
        metrics.CALLBACKS.labels(outcome=state).inc()
        if state != "delivered":
            log.warning("callback %s for job %s %s: %s", row.id, row.job_id, state, error)
        await self._update(row.id, state=state, attempts=row.attempts + 1, claimed_until=None, payload=payload,
                           last_error=error)

    async def _update(self, delivery: str, **fields) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(sa.update(callbacks).where(callbacks.c.id == delivery)
                               .values(**fields, updated=time.time()))
