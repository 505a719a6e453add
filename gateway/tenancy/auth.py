"""Who is calling: an API key from the tenants file, or an OIDC bearer JWT, becomes a Principal.

Both arrive as `Authorization: Bearer <credential>`. A key is hashed
(SHA-256) and compared with every configured hash in constant time, so
neither the time taken nor a log line gives a key, or which tenant owns one,
away; keys are never logged. A JWT is checked against the issuer's JWKS
(PyJWT's PyJWKClient, cached; an unknown key id refetches at most once per
cooldown): signature, issuer, audience, expiry, and the claim naming the
tenant. With neither configured the gateway is open: every caller is the
tenant "public".
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from dataclasses import dataclass

import jwt

from musicsplit.errors import Forbidden, Unauthorized, UpstreamUnavailable
from musicsplit.gateway import metrics
from musicsplit.gateway.settings import GatewaySettings
from musicsplit.gateway.tenancy.tenants import PUBLIC_TENANT, TENANT_NAME, Tenant, load_tenants

log = logging.getLogger(__name__)

# Asymmetric only: an HS256 token "signed" with the public key, or alg "none", never passes.
ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]
LEEWAY_S = 30  # clock skew between the issuer and us


@dataclass(frozen=True)
class Principal:
    """An authenticated tenant; `via` is api_key, oidc or open."""

    tenant: str
    via: str
    subject: str | None = None


class OidcVerifier:
    def __init__(self, issuer: str, audience: str, jwks_url: str, tenant_claim: str, cache_s: int):
        self.issuer = issuer
        self.audience = audience
        self.tenant_claim = tenant_claim
        self.jwks = jwt.PyJWKClient(jwks_url, cache_jwk_set=True, lifespan=cache_s, timeout=10)

    def verify(self, token: str) -> tuple[str, str | None]:
        """(tenant, subject) of a valid token; Unauthorized saying what is wrong (blocking: JWKS fetch)."""
        try:
            alg = jwt.get_unverified_header(token).get("alg")
        except jwt.InvalidTokenError:
            raise Unauthorized("the bearer token is not a well-formed JWT") from None
        if alg not in ALGORITHMS:
            raise Unauthorized(f"the token is signed with {alg!r}; this gateway accepts {', '.join(ALGORITHMS)}")
        try:
            key = self.jwks.get_signing_key_from_jwt(token)
        except jwt.PyJWKClientConnectionError as exc:
            log.warning("cannot fetch the OIDC key set: %s", exc)
            raise UpstreamUnavailable("the token issuer's key set cannot be fetched right now; try again shortly",
                                      retry_after=5) from None
        except (jwt.PyJWKClientError, jwt.InvalidTokenError):
            raise Unauthorized("the token's signing key (kid) is not in the issuer's key set") from None
        try:
            claims = jwt.decode(token, key.key, algorithms=[alg], audience=self.audience, issuer=self.issuer,
                                leeway=LEEWAY_S, options={"require": ["exp", "iss", "aud"]})
        except jwt.ExpiredSignatureError:
            raise Unauthorized("the token has expired") from None
        except jwt.InvalidAudienceError:
            raise Unauthorized(f"the token's audience is not {self.audience}") from None
        except jwt.InvalidIssuerError:
            raise Unauthorized(f"the token's issuer is not {self.issuer}") from None
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthorized(f"the token has no {exc.claim} claim") from None
        except jwt.ImmatureSignatureError:
            raise Unauthorized("the token is not valid yet") from None
        except jwt.InvalidSignatureError:
            raise Unauthorized("the token's signature does not verify") from None
        except jwt.InvalidTokenError as exc:
            raise Unauthorized(f"the token is not valid ({type(exc).__name__})") from None
        tenant = claims.get(self.tenant_claim)
        if not isinstance(tenant, str) or not tenant:
            raise Unauthorized(f"the token has no {self.tenant_claim} claim naming the tenant")
        if not TENANT_NAME.match(tenant):
            raise Unauthorized(f"the token's {self.tenant_claim} claim is not a tenant name")
        subject = claims.get("sub")
        return tenant, subject if isinstance(subject, str) else None


class Authenticator:
    """Built at start from the settings; a bad tenants file or half an OIDC configuration stops the gateway."""

    def __init__(self, settings: GatewaySettings):
        self.tenants: dict[str, Tenant] = load_tenants(settings.api_keys_file) if settings.api_keys_file else {}
        self._keys = [(bytes.fromhex(h), name) for name, t in self.tenants.items() for h in t.api_keys_sha256]
        self.oidc: OidcVerifier | None = None
        if settings.oidc_issuer:
            missing = [n for n in ("oidc_audience", "oidc_jwks_url") if not getattr(settings, n)]
            if missing:
                raise ValueError(f"MUSICSPLIT_GATEWAY_OIDC_ISSUER is set but {', '.join(m.upper() for m in missing)} "
                                 "is not: set both (the JWKS URL is the issuer's jwks_uri)")
            self.oidc = OidcVerifier(settings.oidc_issuer, settings.oidc_audience or "", settings.oidc_jwks_url or "",
                                     settings.oidc_tenant_claim, settings.oidc_jwks_cache_s)

    @property
    def open(self) -> bool:
        return not self.tenants and self.oidc is None

    def describe(self) -> str:
        """What start-up logs about access (never a key or secret)."""
        if self.open:
            return ("no API keys file and no OIDC issuer: the gateway is OPEN, every caller is the tenant "
                    f"{PUBLIC_TENANT!r} (fine for a local demo; set MUSICSPLIT_GATEWAY_API_KEYS_FILE or "
                    "MUSICSPLIT_GATEWAY_OIDC_ISSUER anywhere else)")
        ways = []
        if self.tenants:
            ways.append(f"API keys of {len(self.tenants)} tenants ({', '.join(sorted(self.tenants))})")
        if self.oidc:
            ways.append(f"OIDC tokens from {self.oidc.issuer} (tenant claim {self.oidc.tenant_claim!r})")
        return "callers authenticate with " + " or ".join(ways)

    def tenant(self, name: str) -> Tenant | None:
        return self.tenants.get(name)

    async def authenticate(self, authorization: str | None) -> Principal:
        """The caller of a request with this Authorization header; Unauthorized / Forbidden otherwise."""
        if self.open:
            return Principal(PUBLIC_TENANT, "open")
        if not authorization:
            raise _failed("missing", Unauthorized("this gateway needs credentials: send Authorization: Bearer "
                                                  "<API key or token>", error=None))
        token = _token(authorization)
        if token is None:
            raise _failed("missing", Unauthorized("use Authorization: Bearer <API key or token>",
                                                  error="invalid_request"))
        if self.oidc is not None and _looks_like_jwt(token):
            try:
                tenant, subject = await asyncio.to_thread(self.oidc.verify, token)
            except Unauthorized as exc:
                raise _failed("invalid_token", exc) from None
            if self.tenants and tenant not in self.tenants:
                raise _failed("invalid_token", Forbidden(f"tenant {tenant!r} is not served by this gateway; ask "
                                                         "its operator to add it to the tenants file"))
            return Principal(tenant, "oidc", subject)
        tenant = self._tenant_of_key(token)
        if tenant is None:
            raise _failed("invalid_key", Unauthorized("the API key is not valid"))
        return Principal(tenant, "api_key")

    def _tenant_of_key(self, key: str) -> str | None:
        digest = hashlib.sha256(key.encode()).digest()
        found = None
        for expected, tenant in self._keys:  # every hash, no early exit: constant time in the key
            if hmac.compare_digest(digest, expected):
                found = tenant
        return found


def _failed(reason: str, exc: Exception) -> Exception:
    metrics.AUTH_FAILURES.labels(reason=reason).inc()
    return exc


def _token(authorization: str) -> str | None:
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def _looks_like_jwt(token: str | None) -> bool:
    return bool(token) and token.count(".") == 2 and token.startswith("eyJ")  # type: ignore[union-attr]


def key_hash(key: str) -> str:
    """The tenants file's entry for an API key (sha256 hex)."""
    return hashlib.sha256(key.encode()).hexdigest()
