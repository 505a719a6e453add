"""The tenants file (`MUSICSPLIT_GATEWAY_API_KEYS_FILE`): who may call, with which keys, within which quotas.

    tenants:
      acme:
        api_keys_sha256: [<sha256 hex of each API key>]
        quota: {concurrent_jobs: 10, requests_per_minute: 600, audio_minutes_per_day: 1440}
        callback_hosts: [hooks.acme.example, "*.acme.example"]
        webhook_secret: <a long random string>

Only hashes of keys are stored: a leaked file gives no key away. The file is
read once at start; a file that does not parse, or breaks a rule below, stops
the gateway with a message naming the tenant and field to fix.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

PUBLIC_TENANT = "public"  # every caller of an open gateway (no tenants file, no OIDC)
# Tenant names become metric labels and job-row values: short, plain, bounded.
TENANT_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
HOST_PATTERN = re.compile(r"^(\*\.)?[a-z0-9]([a-z0-9.-]*[a-z0-9])?$|^\[?[0-9a-f:.]+\]?$")


class TenantsFileError(ValueError):
    """The tenants file cannot be used; the message says what to fix."""


class Quota(BaseModel):
    """Per-tenant limits; an absent limit is no limit."""

    model_config = ConfigDict(extra="forbid")

    concurrent_jobs: int | None = Field(None, ge=1, description="Jobs queued or running at once")
    requests_per_minute: int | None = Field(None, ge=1, description="Authenticated API requests per minute")
    audio_minutes_per_day: float | None = Field(None, gt=0, description="Minutes of audio submitted per UTC day")


class Tenant(BaseModel):
    model_config = ConfigDict(extra="forbid")

    api_keys_sha256: list[str] = []
    quota: Quota = Quota()
    callback_hosts: list[str] = []
    webhook_secret: SecretStr | None = None

    @field_validator("api_keys_sha256")
    @classmethod
    def _hashes(cls, value: list[str]) -> list[str]:
        out = []
        for h in value:
            h = h.strip().lower()
            if not SHA256_HEX.match(h):
                raise ValueError("each entry must be the SHA-256 hex digest of a key (64 hex characters), e.g. "
                                 "the output of: printf %s \"$KEY\" | sha256sum")
            out.append(h)
        return out

    @field_validator("callback_hosts")
    @classmethod
    def _hosts(cls, value: list[str]) -> list[str]:
        out = []
        for host in value:
            host = host.strip().lower().rstrip(".")
            if not HOST_PATTERN.match(host):
                raise ValueError(f"{host!r} is not a host name: give names such as hooks.example.com or "
                                 "*.example.com (no scheme, port or path)")
            out.append(host.strip("[]"))
        return out

    @model_validator(mode="after")
    def _callbacks_are_signed(self) -> "Tenant":
        if self.callback_hosts and not (self.webhook_secret and len(self.webhook_secret.get_secret_value()) >= 16):
            raise ValueError("callback_hosts needs a webhook_secret of at least 16 characters: every callback is "
                             "signed with it")
        return self


class TenantsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenants: dict[str, Tenant]

    @field_validator("tenants")
    @classmethod
    def _names_and_keys(cls, value: dict[str, Tenant]) -> dict[str, Tenant]:
        if not value:
            raise ValueError("no tenants: list at least one, or leave the file out to run the gateway open")
        owner: dict[str, str] = {}
        for name, tenant in value.items():
            if not TENANT_NAME.match(name):
                raise ValueError(f"tenant name {name!r}: use 1-63 lower-case letters, digits, '.', '_' or '-'")
            for h in tenant.api_keys_sha256:
                if h in owner and owner[h] != name:
                    raise ValueError(f"tenants {owner[h]!r} and {name!r} list the same key hash {h[:12]}...: "
                                     "a key must identify one tenant")
                owner[h] = name
        return value


def load_tenants(path: Path) -> dict[str, Tenant]:
    """The tenants of the file; TenantsFileError saying what is wrong."""
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise TenantsFileError(f"cannot read the tenants file {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        # Where and what only: yaml's own message quotes the line, which may hold a secret.
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise TenantsFileError(f"the tenants file {path} is not valid YAML{where}: "
                               f"{getattr(exc, 'problem', None) or 'cannot parse it'}") from None
    try:
        return TenantsFile.model_validate(doc).tenants
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'file'}: {e['msg']}" for e in exc.errors())
        raise TenantsFileError(f"the tenants file {path} is not valid: {problems}") from None
