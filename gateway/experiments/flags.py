"""Feature flags: the official Unleash client with an offline bootstrap.

The flag state lives in a file cache under the data dir. On start it is
seeded from the last state fetched (if any) or else from the bootstrap
file shipped with the gateway (flags_bootstrap.json), so the gateway
evaluates flags with no Unleash server at all, and keeps its last state
when the server goes away (the poller fails; the engine keeps what it has).

Flags (see flags_bootstrap.json):
- musicsplit.model: enabled -> the variant is the A/B arm, its payload the
  model; sticky per userId (flexibleRollout + variant stickiness). Disabled
  or outside the rollout -> settings.default_model, arm "control".
- musicsplit.cache, musicsplit.chunked-jobs: feature gates.
- musicsplit.fallback: may a request fall back to another model; a variant
  payload names the model, else settings.fallback_model.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from musicsplit.gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

BOOTSTRAP = Path(__file__).with_name("flags_bootstrap.json")
MODEL_FLAG = "musicsplit.model"
CACHE_FLAG = "musicsplit.cache"
CHUNKED_FLAG = "musicsplit.chunked-jobs"
FALLBACK_FLAG = "musicsplit.fallback"
CONTROL_ARM = "control"


@dataclass(frozen=True)
class Choice:
    model: str
    arm: str


class Flags:
    def __init__(self, settings: GatewaySettings):
        from UnleashClient import UnleashClient
        from UnleashClient.cache import FileCache
        from UnleashClient.constants import FEATURES_URL
        from UnleashClient.utils import InstanceAllowType

        self.settings = settings
        cache_dir = Path(settings.data_dir) / "unleash"
        cache_dir.mkdir(parents=True, exist_ok=True)
        cache = FileCache(settings.unleash_app_name, directory=str(cache_dir))
        last = cache.get(FEATURES_URL)
        if last:
            cache.bootstrap_from_dict(json.loads(last) if isinstance(last, str) else last)
            self.source = "last-known"
        else:
            cache.bootstrap_from_file(Path(settings.flags_bootstrap or BOOTSTRAP))
            self.source = "bootstrap"
        online = bool(settings.unleash_url)
        token = settings.unleash_api_token.get_secret_value() if settings.unleash_api_token else None
        headers = {"Authorization": token} if token else {}
        self.client = UnleashClient(
            url=(settings.unleash_url or "http://127.0.0.1:9/api").rstrip("/"),
            app_name=settings.unleash_app_name,
            environment=settings.unleash_environment,
            refresh_interval=settings.unleash_refresh_s,
            request_timeout=3,
            request_retries=0,
            disable_metrics=not online,
            disable_registration=not online,
            custom_headers=headers,
            cache=cache,
            multiple_instance_mode=InstanceAllowType.SILENTLY_ALLOW,
        )
        try:
            self.client.initialize_client(fetch_toggles=online)
        except Exception as exc:  # server down at start: evaluate from the cache alone
            log.warning("Unleash at %s unreachable (%s); flags from %s state", settings.unleash_url, exc, self.source)
            self.client = UnleashClient(
                url=(settings.unleash_url or "http://127.0.0.1:9/api").rstrip("/"),
                app_name=settings.unleash_app_name, disable_metrics=True, disable_registration=True,
                cache=cache, multiple_instance_mode=InstanceAllowType.SILENTLY_ALLOW,
            )
            self.client.initialize_client(fetch_toggles=False)

    def _context(self, user_id: str | None) -> dict:
        return {"userId": user_id} if user_id else {}

    def enabled(self, flag: str, user_id: str | None = None) -> bool:
        return bool(self.client.is_enabled(flag, self._context(user_id)))

    def choose_model(self, user_id: str | None) -> Choice:
        """The model and A/B arm for this user (sticky: the same user gets the same arm)."""
        variant = self.client.get_variant(MODEL_FLAG, self._context(user_id))
        if variant.get("enabled") and variant.get("payload", {}).get("value"):
            return Choice(str(variant["payload"]["value"]).strip(), variant["name"])
        if variant.get("feature_enabled") and variant.get("name") not in (None, "disabled"):
            # A variant without a payload is an arm on the default model.
            return Choice(self.settings.default_model, variant["name"])
        return Choice(self.settings.default_model, CONTROL_ARM)

    def fallback_model(self, user_id: str | None) -> str | None:
        if not self.enabled(FALLBACK_FLAG, user_id):
            return None
        variant = self.client.get_variant(FALLBACK_FLAG, self._context(user_id))
        payload = (variant.get("payload") or {}).get("value") if variant.get("enabled") else None
        return payload or self.settings.fallback_model

    def close(self) -> None:
        try:
            self.client.destroy()
        except Exception:  # pragma: no cover - shutdown best effort
            pass
