"""A finished run, read back: k6's summary JSON with its samples, aggregated.

`musicsplit loadtest` writes `NAME.json` (k6's handleSummary data, a
`musicsplit` block: scenario, stack, machine, capacity, and a `samples`
block) and `NAME.csv.gz` (k6's CSV output, every sample). `samples` is the
CSV boiled down to what the report uses (`digest`): VUs per sample, each
separation's end time by outcome and API, each success's latency. It keeps
the run small enough to commit (docs/loadtest/runs/), so that the report
regenerates from git alone; the CSV stays out of git. Everything the report
plots comes from here: per-window rates and latency percentiles,
per-user-count bins of a ramp, and the goodput of a steady window.
"""

from __future__ import annotations

import csv
import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl

import numpy as np

OUTCOMES = ("ok", "refused", "failed")
APIS = ("jobs", "v2")


@dataclass
class Run:
    name: str
    summary: dict
    t0: float  # first sample, unix seconds
    t1: float  # last sample
    vus: np.ndarray  # [n, 2]: t (s since t0), VUs
    events: dict[str, np.ndarray]  # outcome -> [n] t of each separation with that outcome
    event_apis: dict[str, np.ndarray]  # outcome -> [n] api of each
    latency: np.ndarray  # [n, 2]: t, seconds (successful separations)
    latency_api: np.ndarray  # [n] api
    failed_checks: dict[str, int] = field(default_factory=dict)

    @property
    def meta(self) -> dict:
        return self.summary.get("musicsplit", {})

    @property
    def scenario(self) -> str:
        return self.meta.get("scenario", self.name)

    @property
    def duration(self) -> float:
        return self.t1 - self.t0

    def count(self, outcome: str, api: str | None = None) -> int:
        apis = self.event_apis[outcome]
        return int(len(apis) if api is None else np.count_nonzero(apis == api))

    def latencies(self, api: str | None = None, start: float = -np.inf, end: float = np.inf) -> np.ndarray:
        t, sec = self.latency[:, 0], self.latency[:, 1]
        keep = (t >= start) & (t < end)
        if api is not None:
            keep &= self.latency_api == api
        return sec[keep]

    def rate(self, outcome: str, start: float, end: float) -> float:
        """Separations with `outcome` per second in [start, end) (seconds since t0)."""
        t = self.events[outcome]
        return float(np.count_nonzero((t >= start) & (t < end)) / max(end - start, 1e-9))


def _tags(row: dict) -> dict:
    return dict(parse_qsl(row.get("extra_tags") or ""))


def digest(csv_path: Path) -> dict:
    """k6's per-sample CSV -> the `samples` block: times in seconds since the run's first sample
    (centisecond precision), latencies in milliseconds."""
    vus, failed_checks, times = [], {}, []
    events = {o: {} for o in OUTCOMES}
    latency: dict[str, list] = {}
    with gzip.open(csv_path, "rt", newline="") as f:
        for row in csv.DictReader(f):
            name = row["metric_name"]
            t = int(row["timestamp"]) / 1000.0
            times.append(t)
            if name == "vus":
                vus.append((t, float(row["metric_value"])))
            elif name.startswith("separations_"):
                events[name.removeprefix("separations_")].setdefault(_tags(row).get("api", ""), []).append(t)
            elif name == "separation_seconds":
                latency.setdefault(_tags(row).get("api", ""), []).append((t, float(row["metric_value"])))
            elif name == "checks" and float(row["metric_value"]) == 0.0:
                failed_checks[row["check"]] = failed_checks.get(row["check"], 0) + 1
    if not times:
        raise ValueError(f"{csv_path} holds no samples: did k6 run?")
    t0 = min(times)

    def rel(t: float) -> float:
        return round(t - t0, 2)

    return {
        "t0": t0, "duration": rel(max(times)),
        "vus": [[rel(t), v] for t, v in vus],
        "ended": {o: {api: [rel(t) for t in ts] for api, ts in sorted(by_api.items())}
                  for o, by_api in events.items()},
        "latency_ms": {api: [[rel(t), round(s * 1000)] for t, s in pairs] for api, pairs in sorted(latency.items())},
        "failed_checks": failed_checks,
    }


def save(summary: dict, path: Path) -> None:
    """A run's JSON as committed: compact (its samples are most of it), one line per top-level key."""
    body = ",\n".join(f"{json.dumps(k)}:{json.dumps(v, separators=(',', ':'), sort_keys=True)}"
                       for k, v in summary.items())
    Path(path).write_text("{\n" + body + "\n}\n")


def read_run(summary_path: Path) -> Run:
    """A run from its summary JSON: its `samples` block, else the CSV next to it (same name, .csv.gz)."""
    summary_path = Path(summary_path)
    summary = json.loads(summary_path.read_text())
    samples = summary.get("samples") or digest(summary_path.with_suffix(".csv.gz"))

    def flat(by_api: dict[str, list]) -> tuple[list, list]:
        pairs = sorted((x, api) for api, xs in by_api.items() for x in xs)
        return [x for x, _ in pairs], [api for _, api in pairs]

    events, apis = {}, {}
    for o in OUTCOMES:
        times, names = flat(samples["ended"].get(o, {}))
        events[o], apis[o] = np.asarray(times, dtype=float), np.asarray(names, dtype=object)
    lat, lat_api = flat(samples["latency_ms"])
    return Run(
        name=summary_path.stem, summary=summary, t0=samples["t0"], t1=samples["t0"] + samples["duration"],
        vus=np.asarray(samples["vus"], dtype=float).reshape(-1, 2),
        events=events, event_apis=apis,
        latency=np.asarray([[t, ms / 1000.0] for t, ms in lat], dtype=float).reshape(-1, 2),
        latency_api=np.asarray(lat_api, dtype=object),
        failed_checks=samples.get("failed_checks", {}),
    )


def percentiles(values: np.ndarray, qs=(50, 95, 99)) -> list[float | None]:
    if len(values) == 0:
        return [None for _ in qs]
    return [float(v) for v in np.percentile(values, qs)]


@dataclass
class Window:
    start: float
    end: float
    vus: float
    ok: float  # per second: goodput
    refused: float
    failed: float
    p50: float | None
    p95: float | None
    p99: float | None
    count: int  # successful separations in the window
    seconds: float  # how long the window (or a bin's seconds together) lasted


def _window(run: Run, start: float, end: float, vus: float) -> Window:
    lat = run.latencies(start=start, end=end)
    p50, p95, p99 = percentiles(lat)
    return Window(start, end, vus, run.rate("ok", start, end), run.rate("refused", start, end),
                  run.rate("failed", start, end), p50, p95, p99, len(lat), end - start)


def timeline(run: Run, window_s: float = 10.0) -> list[Window]:
    """Consecutive windows over the whole run."""
    out = []
    start = 0.0
    while start < run.duration:
        end = min(start + window_s, run.duration + 1.0)
        inside = run.vus[(run.vus[:, 0] >= start) & (run.vus[:, 0] < end), 1]
        out.append(_window(run, start, end, float(inside.mean()) if len(inside) else 0.0))
        start = end
    return out


def by_users(run: Run, width: int = 10) -> list[Window]:
    """Seconds grouped by how many VUs were active (bins of `width`), each bin's rates
    and latency percentiles. A separation counts in the bin of the second it ended.
    Only seconds up to the last one at the peak count: the ramp down after it drains
    the queue the peak built, which says nothing about fewer users."""
    if len(run.vus) == 0:
        return []
    peak = run.vus[:, 1].max()
    last_peak = run.vus[run.vus[:, 1] == peak, 0].max()
    up = run.vus[run.vus[:, 0] <= last_peak]
    bins: dict[int, list[int]] = {}
    for s, v in zip(np.floor(up[:, 0]).astype(int), up[:, 1]):
        if v > 0:
            bins.setdefault(int(np.ceil(v / width)) * width, []).append(int(s))
    out = []
    for top, secs in sorted(bins.items()):
        secs_arr = np.asarray(sorted(set(secs)))
        mask = lambda t: np.isin(np.floor(t).astype(int), secs_arr)  # noqa: E731
        span = float(len(secs_arr))
        lat = run.latency[mask(run.latency[:, 0]), 1] if len(run.latency) else np.array([])
        p50, p95, p99 = percentiles(lat)
        rates = {o: np.count_nonzero(mask(run.events[o])) / span for o in OUTCOMES}
        out.append(Window(float(secs_arr.min()), float(secs_arr.max()) + 1, float(top), rates["ok"],
                          rates["refused"], rates["failed"], p50, p95, p99, len(lat), span))
    return out


def steady_goodput(run: Run) -> tuple[float, float, float]:
    """(goodput, start, end): successful separations per second after the scenario's
    warm-up and before its nominal end (the drain afterwards is not steady). A run
    shortened below three warm-ups skips only its first third."""
    spec = run.meta.get("spec", {})
    end = min(run.duration, parse_duration(spec.get("duration", "0s")) or run.duration)
    start = min(float(spec.get("warmup_s", 0.0)), end / 3)
    return run.rate("ok", start, end), start, end


def cpu_used(run: Run) -> dict[str, float]:
    """CPU seconds each stack process used during the run (empty without a --stack)."""
    samples = run.meta.get("stack", {}).get("rss", [])
    used = {}
    for comp in sorted({x["component"] for x in samples}):
        cpu = [x["cpu_s"] for x in samples if x["component"] == comp and "cpu_s" in x]
        if cpu:
            used[comp] = cpu[-1] - cpu[0]
    return used


def predictor_cpu_per_ok(run: Run) -> float | None:
    """Predictor CPU seconds per successful separation: the work one separation takes,
    whatever share of the CPU the rest of the machine left the predictors."""
    used = cpu_used(run)
    total = sum(v for k, v in used.items() if k.startswith("predictor"))
    return total / run.count("ok") if total and run.count("ok") else None


def parse_duration(text: str) -> float:
    """k6 durations: '50s', '2m', '1m30s'."""
    total, number = 0.0, ""
    for ch in str(text):
        if ch.isdigit() or ch == ".":
            number += ch
        elif ch in "hms" and number:
            total += float(number) * {"h": 3600, "m": 60, "s": 1}[ch]
            number = ""
    return total
