"""What a separation costs: compute seconds x price per device-second x devices.

One formula for the predictor's `cost_usd` (response parameter and metrics)
and for docs/cost.md (benchmarks/cost_report.py), over one price table
(predictor/prices.yaml), so the figures users read and the ones the
predictor exports cannot drift apart.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import yaml

PRICES_FILE = Path(__file__).with_name("prices.yaml")


@dataclass(frozen=True)
class Price:
    usd_per_hour: float
    instance: str
    source: str
    date: str
    checked: bool

    @property
    def per_second(self) -> float:
        return self.usd_per_hour / 3600


@dataclass(frozen=True)
class PriceTable:
    gpus: dict[str, Price]
    cpu_core: Price
    default_gpu: str

    def gpu(self, gpu_name: str | None) -> tuple[str, Price]:
        """The table's entry for a CUDA device name (e.g. 'NVIDIA A10G'), or the default GPU's."""
        name = (gpu_name or "").upper()
        for key in sorted(self.gpus, key=len, reverse=True):  # L40S before L4, A100 before A10
            if key.upper() in name:
                return key, self.gpus[key]
        return self.default_gpu, self.gpus[self.default_gpu]


def _price(doc: dict) -> Price:
    return Price(float(doc["usd_per_hour"]), str(doc["instance"]), str(doc["source"]), str(doc["date"]),
                 bool(doc.get("checked", False)))


@functools.cache
def load_prices(path: Path = PRICES_FILE) -> PriceTable:
    doc = yaml.safe_load(Path(path).read_text())
    return PriceTable({k: _price(v) for k, v in doc["gpu"].items()}, _price(doc["cpu_core"]), doc["default_gpu"])


def separation_cost(compute_seconds: float, price_per_second: float, devices: float = 1.0) -> float:
    """USD for one separation: its compute seconds x the price per device-second x devices
    (CPU: the cores, i.e. torch threads, it ran on; GPU: 1)."""
    return compute_seconds * price_per_second * devices
