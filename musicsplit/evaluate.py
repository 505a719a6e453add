"""Ground-truth quality: SDR of a model on the golden set, over HTTP or in process.

The canary gate (operator), the model cards and `musicsplit eval` all read
the same numbers: per-stem SDR (MDX / Demucs definition) averaged over the
golden items, and their mean over stems.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from musicsplit.golden import GoldenItem, builtin_set, golden_set
from musicsplit.quality import sdr_per_stem

if TYPE_CHECKING:
    from musicsplit.v2client import V2Client


@dataclass
class ItemResult:
    name: str
    sdr: dict[str, float]  # dB per stem
    model_version: str | None = None
    quality_score: float | None = None

    @property
    def mean(self) -> float:
        return float(np.mean(list(self.sdr.values())))


@dataclass
class EvalReport:
    model: str
    items: list[ItemResult] = field(default_factory=list)

    @property
    def model_version(self) -> str | None:
        """The version that answered; several (comma-joined) if a traffic split mixed them."""
        versions = sorted({i.model_version for i in self.items if i.model_version})
        return ",".join(versions) or None

    @property
    def per_stem(self) -> dict[str, float]:
        """Mean SDR per stem over the items that have it (a user's reference
        track may hold some stems only)."""
        stems = list(dict.fromkeys(s for i in self.items for s in i.sdr))
        return {s: float(np.mean([i.sdr[s] for i in self.items if s in i.sdr])) for s in stems}

    @property
    def mean_sdr(self) -> float:
        """Mean over stems of the per-stem means (the MDX 'mean SDR')."""
        values = list(self.per_stem.values())
        return float(np.mean(values)) if values else float("nan")

    def part(self, real: bool) -> EvalReport:
        """The real-music items (`real-*`) or the synthetic ones alone."""
        return EvalReport(self.model, [i for i in self.items if i.name.startswith("real-") == real])

    def format_table(self) -> str:
        stems = list(self.per_stem)
        width = max([len(i.name) for i in self.items] + [8])
        head = f"{'SDR (dB)':<{width}}" + "".join(f"{s:>9}" for s in stems) + f"{'mean':>9}"
        lines = [f"model {self.model} version {self.model_version or 'unknown'}: "
                 f"{len(self.items)} golden items", head, "-" * len(head)]
        for item in self.items:
            lines.append(f"{item.name:<{width}}" + "".join(f"{item.sdr.get(s, float('nan')):9.2f}" for s in stems)
                         + f"{item.mean:9.2f}")
        lines.append("-" * len(head))
        lines.append(f"{'mean':<{width}}" + "".join(f"{v:9.2f}" for v in self.per_stem.values())
                     + f"{self.mean_sdr:9.2f}")
        for label, part in (("real music", self.part(True)), ("synthetic", self.part(False))):
            if part.items and len(part.items) < len(self.items):
                lines.append(f"{label:<{width}}" + "".join(f"{part.per_stem.get(s, float('nan')):9.2f}"
                                                           for s in stems) + f"{part.mean_sdr:9.2f}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "model_version": self.model_version,
            "mean_sdr": self.mean_sdr,
            "per_stem": self.per_stem,
            "real_mean_sdr": self.part(True).mean_sdr if self.part(True).items else None,
            "synthetic_mean_sdr": self.part(False).mean_sdr if self.part(False).items else None,
            "items": [{"name": i.name, "sdr": i.sdr, "mean": i.mean, "model_version": i.model_version,
                       "quality_score": i.quality_score} for i in self.items],
        }


def _references(item: GoldenItem, stems: list[str] | None) -> dict[str, np.ndarray]:
    return {k: v for k, v in item.stems.items() if not stems or k in stems}


def _score(item: GoldenItem, estimates: dict[str, np.ndarray], stems: list[str] | None) -> dict[str, float]:
    sdr = sdr_per_stem(_references(item, stems), estimates)
    if not sdr:
        raise ValueError(f"the model returned stems {sorted(estimates)}, none of the golden set's "
                         f"{sorted(_references(item, stems))}")
    return sdr


def evaluate(client: V2Client, model: str, items: list[GoldenItem] | None = None, *,
             stems: list[str] | None = None, shifts: int | None = None, source: str | None = None) -> EvalReport:
    """Separate each golden item through a v2 predictor (or gateway) and score it.

    Only stems both the model and the golden set have are scored (a 6-stem
    model's guitar and piano are not). `shifts=0` makes the scores repeatable
    (Demucs' default shift is random); `source` marks the requests as not a
    user's (the canary probe sends `probe`). Raises V2Error / httpx errors as
    the client does.
    """
    report = EvalReport(model)
    for item in items if items is not None else builtin_set():
        result = client.separate(model, item.mixture, item.sample_rate, stems=stems, shifts=shifts, source=source)
        report.items.append(ItemResult(item.name, _score(item, result.stems, stems),
                                       result.model_version, result.quality_score))
    return report


def evaluate_separator(separator, items: list[GoldenItem] | None = None, *,
                       stems: list[str] | None = None) -> EvalReport:
    """The same scores in process, for anything with the predictor's `separate()` (model cards)."""
    if items is None:  # the real excerpts are at 44.1 kHz only
        items = builtin_set() if separator.samplerate == 44100 else golden_set(sample_rate=separator.samplerate)
    report = EvalReport(getattr(separator, "name", type(separator).__name__))
    for item in items:
        if item.sample_rate != separator.samplerate:
            raise ValueError(f"{item.name} is at {item.sample_rate} Hz, the model at {separator.samplerate} Hz")
        estimates = dict(zip(separator.sources, separator.separate(item.mixture)))
        report.items.append(ItemResult(item.name, _score(item, estimates, stems)))
    return report


def add_commands(sub, serve) -> None:
    p = sub.add_parser("eval", help="SDR of a served model on the golden set (per stem, dB)")
    p.add_argument("--url", required=True, help="predictor or gateway base URL, e.g. http://127.0.0.1:8080")
    p.add_argument("--model", required=True, help="model name")
    p.add_argument("--stems", help="comma-separated stems to score (default: all the model has)")
    p.add_argument("--timeout", type=float, default=600.0, help="per-request timeout in seconds")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=eval_command)


def eval_command(args) -> int:
    import httpx

    from musicsplit.v2client import V2Client, V2Error

    stems = args.stems.split(",") if args.stems else None
    try:
        with V2Client(args.url, timeout=args.timeout) as client:
            report = evaluate(client, args.model, stems=stems)
    except V2Error as exc:
        print(f"error: {args.url} answered {exc.status}: {exc.message}", file=sys.stderr)
        return 1
    except (httpx.HTTPError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.format_table())
    return 0
