"""Predictor settings: one typed object, from flags or MUSICSPLIT_* environment.

Flags follow KServe's ModelServer names (`--model_name`, `--http_port`,
`--grpc_port`, ...); everything musicsplit adds also reads from the
environment, so a ServingRuntime can set it without changing args.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from musicsplit.predictor.cost import load_prices
from musicsplit.validation import InputLimitSettings


class PredictorSettings(BaseSettings, InputLimitSettings):
    model_config = SettingsConfigDict(env_prefix="MUSICSPLIT_", extra="ignore")

    model_name: str = "htdemucs"
    model_dir: str = "/mnt/models"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # Stems the deployment must provide (comma-separated, from the SeparationModel);
    # a model that cannot fails its load instead of serving the wrong stems.
    stems: str | None = None
    # The version the deployment rolls out (the SeparationModel's spec.model.version): a
    # manifest naming another version fails the load, so the canary fails visibly; a
    # dir without a manifest is served (and labelled) as this version.
    expected_version: str | None = None
    warmup: bool = True
    # fp32 | bf16 | fp16 | auto: auto is bf16 on a CPU with AVX512-BF16/AMX, bf16 or fp16 on
    # a GPU, fp32 otherwise (predictor/precision.py, docs/adr/0003). A misspelt value or one
    # the device cannot run well fails the load, reported like any load failure.
    precision: str = "auto"
    # Segments of one track per forward pass; 0 = auto (4 on CUDA, 1 on CPU, where
    # batching measured slower).
    segment_batch: int = Field(default=0, ge=0)

    # Concurrency: requests running inference at once, and how many may wait.
    max_inflight: int = 1
    max_queue: int = 4
    cpu_threads: int = 0  # 0 = torch default

    # Prices (predictor/cost.py): GPU-seconds x price per GPU-second; CPU-seconds x cores x
    # price per core-second. Unset: the price table (predictor/prices.yaml) for the GPU found.
    gpu_price_per_second: float | None = None
    cpu_price_per_core_second: float = Field(default_factory=lambda: load_prices().cpu_core.per_second)
    # Input limits: max_request_bytes, max_audio_seconds, min_sample_rate,
    # max_channels (InputLimitSettings; MUSICSPLIT_MAX_AUDIO_SECONDS etc.).

    def gpu_price(self, gpu_name: str | None) -> float:
        """USD per GPU-second: the configured price, or the price table's for this GPU."""
        if self.gpu_price_per_second is not None:
            return self.gpu_price_per_second
        return load_prices().gpu(gpu_name)[1].per_second
