"""Gateway settings: one typed object, from MUSICSPLIT_GATEWAY_* environment or flags.

Secrets (tokens, keys, URLs that carry a password or a webhook's key) are
SecretStr: they never print, in a repr, a log line or a dump.

Lists and maps (endpoints, aliases) are JSON in the environment, e.g.
MUSICSPLIT_GATEWAY_ENDPOINTS='[{"model": "htdemucs", "url": "http://eu.example", "region": "eu"}]'.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from musicsplit.gateway.tenancy.tenants import Quota
from musicsplit.validation import InputLimitSettings


class Endpoint(BaseModel):
    """One predictor serving `model` at `url` (KServe v2) in `region`."""

    model: str
    url: str
    region: str = "local"


class GatewaySettings(BaseSettings, InputLimitSettings):
    model_config = SettingsConfigDict(env_prefix="MUSICSPLIT_GATEWAY_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8080
    # Idle keep-alive of client connections. Longer than the idle timeout of whatever sits in
    # front (load balancers: 60 s), so the client side closes an idle connection first: at
    # uvicorn's default 5 s, an upload sent as the server closes is reset (found by the load test).
    keepalive_s: float = 75.0
    # Slow clients: a request's headers must be in within header_timeout_s (serving.py), and its body
    # may pause at most body_timeout_s between reads (ingress.py); 408 and the connection closed.
    header_timeout_s: float = Field(15.0, gt=0)
    body_timeout_s: float = Field(30.0, gt=0)
    # Uploads one tenant may stream into this replica at once; 429 beyond (one tenant's slow uploads
    # must not take every connection and staging byte).
    max_uploads_per_tenant: int = Field(8, ge=1)
    # Progress WebSockets open at once on this replica; 429 at the handshake beyond.
    max_progress_sockets_per_tenant: int = Field(64, ge=1)
    max_progress_sockets_per_job: int = Field(4, ge=1)
    metrics_port: int = 9091  # /metrics is served here (same host), never on the API port; 0: not served
    ui_enabled: bool = True  # the web page at /ui (gateway/ui/, api/routers/ui.py); its API routes stay either way

    # Who may call (auth.py). Neither a tenants file nor an OIDC issuer: the gateway is open (the local
    # demo), every caller is the tenant "public", and it says so at start.
    api_keys_file: Path | None = None  # tenants.py: tenants, their API key hashes, quotas, callback hosts
    oidc_issuer: str | None = None
    oidc_audience: str | None = None
    oidc_jwks_url: str | None = None
    oidc_tenant_claim: str = "tenant"
    # The quota of a tenant the tenants file does not list (an OIDC token's tenant claim, with OIDC
    # alone or beside a file): bounded, so a new tenant cannot take the whole gateway. JSON in the
    # environment, e.g. MUSICSPLIT_GATEWAY_DEFAULT_QUOTA='{"concurrent_jobs": 4}'. An open gateway
    # (no credentials at all: the local demo) has no quota.
    default_quota: Quota = Quota(concurrent_jobs=4, requests_per_minute=300, audio_minutes_per_day=600)
    oidc_jwks_cache_s: int = 300
    progress_ticket_ttl_s: float = 60.0  # a WebSocket progress ticket is good once, for this long

    # Completion callbacks (callbacks.py): signed POSTs to a tenant's allowed hosts, retried with backoff.
    callback_allow_private: bool = False  # allow loopback/private/link-local targets (a test, a private network)
    callback_timeout_s: float = 10.0
    callback_max_attempts: int = 10
    callback_retry_initial_s: float = 1.0
    callback_retry_max_wait_s: float = 600.0
    callback_poll_s: float = 2.0  # how often due deliveries are looked for (finished jobs also wake it)

    # Predictors. Regions are tried in `region_order` (nearest first), healthy first.
    endpoints: list[Endpoint] = []
    region_order: list[str] = []
    default_model: str = "htdemucs"
    fallback_model: str | None = None  # used when every endpoint of the chosen model is down (flag-gated)
    aliases: dict[str, str] = {}  # static aliases; `default` is resolved by flags per user
    health_interval_s: float = 5.0

    # Storage. The job store is PostgreSQL (postgresql://user:pass@host:5432/db) or, when empty,
    # the SQLite file data_dir/jobs.sqlite3 (one replica). Inputs and stems: an S3-compatible
    # bucket (s3://bucket/prefix; credentials from the standard AWS_* environment, as boto3 reads
    # them) or, when empty, data_dir/jobs/ (one replica). Several replicas need PostgreSQL, S3 and
    # events_backend "redis" (docs/gateway.md).
    data_dir: Path = Path("/var/lib/musicsplit-gateway")
    database_url: SecretStr | None = None
    storage_url: str = ""
    s3_endpoint_url: str | None = None  # MinIO, Ceph, moto...; unset: AWS
    s3_region: str | None = None
    presigned_url_expiry_s: float = 900.0  # downloads (307 to a presigned GET) and presigned uploads
    results_ttl_s: float = 24 * 3600.0
    sweep_interval_s: float = 60.0
    # Presigned uploads (POST /v1/uploads; S3 storage only) go straight to the bucket and are
    # validated block by block from there, so they may be bigger than a request body
    # (max_request_bytes, which the gateway buffers). Never turned into a job: deleted after uploads_ttl_s.
    max_upload_bytes: int = 1024**3
    uploads_ttl_s: float = 24 * 3600.0

    # Progress events: "inprocess" (one replica) or "redis" (redis_url; a WebSocket on any replica
    # follows a job running on another).
    events_backend: Literal["inprocess", "redis"] = "inprocess"

    # Leases: a replica holds each job it runs for lease_seconds, renewed every third of it; a job
    # whose lease expired (its replica died) is taken over by another replica from its last
    # checkpointed chunk. Idle replicas look for queued jobs every queue_poll_s.
    lease_seconds: float = 30.0
    # A job identical to one running here waits for that one's result (single flight) for up to this
    # long, then separates on its own.
    single_flight_wait_s: float = 300.0
    queue_poll_s: float = 1.0

    # Jobs: workers per replica (0: this replica serves the API and runs no jobs), a queue bound
    # shared by all replicas (429 beyond), chunking.
    max_running_jobs: int = 4
    max_queued_jobs: int = 64
    chunk_seconds: float = 30.0
    chunk_overlap_seconds: float = 2.0
    chunk_concurrency: int = 4  # chunks of one job in flight at once
    chunk_window: int = 8  # chunks held in memory per job (bounded memory)
    chunk_align_samples: int = 0  # start chunks on this grid (a model's frame hop / segment stride); 0 = even spread

    # Resilience.
    request_timeout_s: float = 600.0
    connect_timeout_s: float = 3.0
    retry_attempts: int = 4
    retry_max_wait_s: float = 4.0
    chunk_retries: int = 2  # a chunk whose routed call failed is tried again this often, after Retry-After
    chunk_retry_max_wait_s: float = 15.0
    # A chunk whose predictors all answered 429 (alive, busy with other work) waits for a place, after
    # Retry-After, without using up chunk_retries: an accepted job is not failed for the platform being
    # busy. A job waits so for up to this long in all (its chunks together, other errors in between
    # included), then fails saying so.
    chunk_saturated_wait_s: float = 600.0
    # A chunk answered by another model version than the job's first chunk (a rollout under way)
    # is sent again this often, the job's version preferred, before the job fails (model_changed).
    chunk_version_retries: int = 4
    breaker_failures: int = 3
    breaker_reset_s: float = 15.0

    # Input limits: max_request_bytes, max_audio_seconds, min_sample_rate and
    # max_channels come from InputLimitSettings (shared with the predictor).
    max_audio_seconds_unchunked: float = 10 * 60.0  # a single v2 request stays under Knative's 600 s cap
    # The predictors' MUSICSPLIT_MAX_REQUEST_BYTES: a track whose fp32 samples would make a bigger
    # request is chunked, and no chunk is bigger.
    predictor_max_request_bytes: int = 200 * 1024 * 1024
    max_batch_files: int = 32
    # Refused (429/503) uploads whose rest is read and dropped at once, so clients can read the
    # refusal (ingress.py); beyond, a refusal closes the connection.
    max_refusal_drains: int = Field(16, ge=0)
    # v2 pass-through requests in flight per replica (each may hold a spooled body); 429 beyond.
    v2_max_concurrent: int = 8
    # A v2 JSON response up to this size is read to say its model version and quality; a bigger one
    # (or any binary one, past its JSON header) streams to the client unread.
    v2_max_parsed_response_bytes: int = 16 * 1024 * 1024

    # Cache: "disk" (embedded default), "redis" (shared by replicas) or "none".
    cache_backend: str = "disk"
    cache_max_bytes: int = 2 * 1024**3
    redis_url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")
    cache_ttl_s: float = 7 * 24 * 3600.0
    reseparation_window_s: float = 24 * 3600.0

    # Flags: Unleash; the bootstrap file is the offline default.
    unleash_url: str | None = None
    unleash_api_token: SecretStr | None = None
    unleash_app_name: str = "musicsplit-gateway"
    unleash_environment: str = "default"
    unleash_refresh_s: int = 15
    flags_bootstrap: Path | None = None  # default: gateway/experiments/flags_bootstrap.json

    # Shadow traffic (gateway/upstream/shadow.py, ADR 0108): while a model has a canary step, a sample of
    # users' successful separations (v2 requests, job chunks) is sent again to the canary, never
    # answered to anyone, and its stems compared with the stable ones the user got. Which model has
    # a canary, and where: SeparationModels' status.shadow in `shadow_namespace`, read through the
    # Kubernetes API (list on separationmodels.musicsplit.io) every `shadow_refresh_s`.
    shadow_enabled: bool = False
    # A job's chunks go to the version its first chunk was served by, at the per-version URLs the
    # SeparationModels' status publishes (canaries.py; read like shadow traffic's, from
    # shadow_namespace): a long job during a canary split finishes with one version.
    pin_versions: bool = False
    shadow_sample_rate: float = Field(0.05, ge=0.0, le=1.0)  # share of eligible separations mirrored
    shadow_max_concurrent: int = Field(2, ge=1)  # mirrored calls in flight; beyond, dropped (counted `skipped`)
    # What one mirror may hold in memory: its request, the user's answer and the canary's. A larger
    # separation is not mirrored (counted `skipped`): memory for mirrors <= max_concurrent x this.
    shadow_max_bytes: int = Field(64 * 1024 * 1024, ge=1)
    shadow_namespace: str | None = None  # empty: the gateway's own (in a cluster), else the kubeconfig context's
    shadow_refresh_s: float = Field(10.0, gt=0)
    # Outside a cluster: this kubeconfig (empty: $KUBECONFIG, then ~/.kube/config).
    shadow_kubeconfig: Path | None = None

    # Unexpected errors go to Sentry; incidents page through Alertmanager on the gateway's
    # metrics (docs/adr/0208-paging-through-alertmanager.md), never from the gateway itself.
    sentry_dsn: SecretStr | None = None

    @field_validator("storage_url")
    @classmethod
    def _storage_url(cls, value: str) -> str:
        if value and not (value.startswith("s3://") and value[5:].split("/", 1)[0]):
            raise ValueError(f"storage_url must be empty (the data dir) or s3://bucket[/prefix], not {value!r}")
        return value

    @property
    def staging_dir(self) -> Path:
        """Local scratch for bodies being read, validated or compared (uploads, v2 bodies, cache hits):
        swept of files older than an hour."""
        return self.data_dir / "staging"

    @property
    def db_path(self) -> Path:
        """The SQLite job store's file (used when database_url is empty)."""
        return self.data_dir / "jobs.sqlite3"
