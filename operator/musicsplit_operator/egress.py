"""The one rule for every URL a SeparationModel's author may make the operator
call or fetch: rollout webhooks, golden sets in storage, another Prometheus.

A URL is allowed when an entry of the purpose's allowlist names it (parsed
scheme, host and port equal, the path under the entry's at a segment
boundary; no `..` segments). Where the allowlist is empty, webhooks (and only
they, as in Flagger) may call any http(s) URL on a public address: never
loopback, link-local (the cloud metadata endpoint), private, reserved or
cluster-internal ones (`*.svc`, `*.cluster.local`, a name without a dot),
unless `allowed_networks` (CIDRs) names their network. Names are resolved at
call time too, so a public name that resolves to a private address is refused
(a receiver that answers with its status code would otherwise be a port
scanner for anyone who can create a SeparationModel).

Golden-set storage and Prometheus have no open default: only their allowlist.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Callable
from urllib.parse import urlsplit

HTTP_PORTS = {"http": 80, "https": 443}
INTERNAL_SUFFIXES = (".svc", ".cluster.local", ".local", ".internal", ".localhost", ".localdomain")
Resolver = Callable[[str], list[str]]


def _origin(url: str) -> tuple[str, str, int, str]:
    u = urlsplit(url.strip())
    scheme = u.scheme.lower()
    try:
        port = u.port
    except ValueError:  # not a number
        port = -1
    return scheme, (u.hostname or "").lower().rstrip("."), port or HTTP_PORTS.get(scheme, 0), u.path or "/"


def listed(url: str, allowlist: list[str] | tuple[str, ...]) -> bool:
    """Named by an allowlist entry (scheme, host and port equal; path under it)."""
    scheme, host, port, path = _origin(url)
    if any(seg == ".." for seg in path.split("/")):
        return False
    for entry in allowlist:
        e_scheme, e_host, e_port, e_path = _origin(entry)
        base = e_path.rstrip("/")
        if (scheme, host, port) == (e_scheme, e_host, e_port) and (path == base or path.startswith(base + "/")):
            return True
    return False


def redact(url: str) -> str:
    """`url` fit for status, Events and logs: no user or password, no query."""
    u = urlsplit(url.strip())
    if not u.netloc:
        return url
    host = u.netloc.rsplit("@", 1)[-1]
    return u._replace(netloc=("***@" if "@" in u.netloc else "") + host, query="***" if u.query else "").geturl()


def resolve(host: str) -> list[str]:
    """The addresses `host` resolves to now."""
    return sorted({info[4][0] for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)})


@dataclass(frozen=True)
class EgressPolicy:
    """One purpose's rule. `open_by_default`: with an empty allowlist, any
    public http(s) URL (webhooks); otherwise the allowlist alone."""

    allowlist: tuple[str, ...] = ()
    open_by_default: bool = False
    allowed_networks: tuple[str, ...] = ()
    setting: str = "the operator's allowlist"  # named in refusals: what the admin changes

    def _network_allowed(self, ip: ipaddress._BaseAddress) -> bool:
        return any(ip in ipaddress.ip_network(n, strict=False) for n in self.allowed_networks)

    def _address_refusal(self, address: str) -> str | None:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if getattr(ip, "ipv4_mapped", None):
            ip = ip.ipv4_mapped
        if ip.is_global and not ip.is_multicast:
            return None
        if self._network_allowed(ip):
            return None
        kind = ("loopback" if ip.is_loopback else "link-local" if ip.is_link_local else
                "private" if ip.is_private else "reserved")
        return f"{address}, a {kind} address"

    def refusal(self, url: str, resolve: Resolver | None = None) -> str | None:
        """None if the operator may request `url`, else why not. `resolve`
        (host -> addresses) checks where a name leads: pass it at call time."""
        scheme, host, _, _ = _origin(url)
        if listed(url, self.allowlist):
            return None
        if self.allowlist or not self.open_by_default:
            return f"not in {self.setting}"
        if scheme not in HTTP_PORTS or not host:
            return "not an http(s) URL"
        try:
            why = self._address_refusal(host)
            why = why and f"{host} is {why.split(', ', 1)[1]}"
        except ValueError:  # a name, not an address
            if host == "localhost" or "." not in host or host.endswith(INTERNAL_SUFFIXES):
                why = f"{host} is a cluster-internal or local name"
            elif resolve is not None:
                try:
                    addresses = resolve(host)
                except OSError as e:
                    return f"{host} does not resolve ({type(e).__name__})"
                why = next((f"{host} resolves to {w}" for a in addresses if (w := self._address_refusal(a))), None)
            else:
                why = None
        return f"{why}, not in {self.setting} (name it there, or its network in " \
               f"MUSICSPLIT_OPERATOR_EGRESS_ALLOWED_NETWORKS)" if why else None

    def allowed(self, url: str, resolve: Resolver | None = None) -> bool:
        return self.refusal(url, resolve) is None
