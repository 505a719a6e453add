"""The numbers the report prints, from k6's CSV or the samples digested from it: rates, user bins,
steady goodput."""

from __future__ import annotations

import csv
import gzip
import json

import pytest

from musicsplit.loadtest.results import by_users, digest, parse_duration, read_run, save, steady_goodput, timeline

COLUMNS = ["metric_name", "timestamp", "metric_value", "check", "error", "error_code", "expected_response", "group",
           "method", "name", "proto", "scenario", "service", "status", "subproto", "tls_version", "url", "extra_tags",
           "metadata"]
T0 = 1_800_000_000_000  # ms


def write_run(tmp_path, rows, spec, kept: bool = False):
    """A k6-shaped run: NAME.json (summary) and NAME.csv.gz (samples) as k6 leaves them; `kept`: as
    docs/loadtest/runs keeps it, the samples digested into the JSON and no CSV."""
    (tmp_path / "run.json").write_text(json.dumps({"metrics": {}, "musicsplit": {"scenario": "run", "spec": spec}}))
    with gzip.open(tmp_path / "run.csv.gz", "wt", newline="") as f:
        w = csv.DictWriter(f, COLUMNS)
        w.writeheader()
        for name, ms, value, tags in rows:
            w.writerow({"metric_name": name, "timestamp": T0 + ms, "metric_value": value, "extra_tags": tags})
    if kept:
        summary = json.loads((tmp_path / "run.json").read_text())
        save({**summary, "samples": digest(tmp_path / "run.csv.gz")}, tmp_path / "run.json")
        (tmp_path / "run.csv.gz").unlink()
    return read_run(tmp_path / "run.json")


@pytest.fixture(params=["csv", "kept"])
def two_levels(tmp_path, request):
    """5 users for 10 s (1 ok/s, 1 s each), then 15 users for 10 s (3 ok/s, 2 s each, 1 refused/s),
    then 15 s of ramp-down drain at 2 users."""
    rows = []
    for s in range(35):
        rows.append(("vus", s * 1000, 5 if s < 10 else 15 if s < 20 else 2, ""))
        if s < 10:
            rows += [("separations_ok", s * 1000 + 500, 1, "api=jobs"), ("separation_seconds", s * 1000 + 500, 1.0,
                                                                         "api=jobs")]
        elif s < 20:
            for k in range(3):
                rows += [("separations_ok", s * 1000 + 100 + k, 1, "api=v2" if k == 0 else "api=jobs"),
                         ("separation_seconds", s * 1000 + 100 + k, 2.0, "api=v2" if k == 0 else "api=jobs")]
            rows.append(("separations_refused", s * 1000 + 700, 1, "api=jobs"))
        else:
            rows += [("separations_ok", s * 1000 + 500, 1, "api=jobs"), ("separation_seconds", s * 1000 + 500, 30.0,
                                                                         "api=jobs")]
    return write_run(tmp_path, rows, {"duration": "20s", "warmup_s": 5}, kept=request.param == "kept")


def test_user_bins_hold_each_levels_rates_and_latency_and_leave_out_the_drain(two_levels):
    bins = by_users(two_levels)
    assert [(b.vus, b.seconds) for b in bins] == [(10, 10), (20, 10)]
    low, high = bins
    assert (low.ok, low.refused, low.failed, low.p99, low.count) == (1.0, 0.0, 0.0, 1.0, 10)
    assert (high.ok, high.refused, high.p50, high.p99, high.count) == (3.0, 1.0, 2.0, 2.0, 30)


def test_counts_per_outcome_and_api(two_levels):
    assert two_levels.count("ok") == 10 + 30 + 15
    assert two_levels.count("ok", "v2") == 10 and two_levels.count("refused", "jobs") == 10
    assert list(two_levels.latencies("v2")) == [2.0] * 10


def test_steady_goodput_skips_the_warmup_and_the_drain(two_levels):
    goodput, start, end = steady_goodput(two_levels)
    assert (start, end) == (5.0, 20.0)
    assert goodput == pytest.approx((5 * 1 + 10 * 3) / 15)


def test_timeline_windows_cover_the_run(two_levels):
    windows = timeline(two_levels, window_s=10)
    assert [w.ok for w in windows[:3]] == [1.0, 3.0, 1.0]
    assert [w.vus for w in windows[:3]] == [5, 15, 2]
    assert windows[2].p99 == 30.0


@pytest.mark.parametrize("text,seconds", [("50s", 50), ("2m", 120), ("1m30s", 90), ("1h", 3600), ("", 0)])
def test_k6_durations(text, seconds):
    assert parse_duration(text) == seconds


def test_the_report_heads_its_page_with_the_note_on_its_figures(two_levels, tmp_path):
    from musicsplit.loadtest.report import write_report

    note = "Figures from 2026-11-26, machine shared with other jobs"
    md = write_report(tmp_path, tmp_path / "docs", note=note).read_text().splitlines()
    assert md[:3] == ["# Load tests", "", f"> **{note}**"]
    assert any(line.startswith("| run |") for line in md)  # the figures the note is about follow it
    assert "> **" not in "\n".join(write_report(tmp_path, tmp_path / "plain").read_text().splitlines()[1:4])


def _run_named(folder, name, rows, summary):
    """A run NAME.json + NAME.csv.gz with k6's summary `metrics` and musicsplit's metadata."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(summary))
    with gzip.open(folder / f"{name}.csv.gz", "wt", newline="") as f:
        w = csv.DictWriter(f, COLUMNS)
        w.writeheader()
        for metric, ms, value, tags in rows:
            w.writerow({"metric_name": metric, "timestamp": T0 + ms, "metric_value": value, "extra_tags": tags})


def test_the_report_says_plainly_which_thresholds_failed_and_that_goodput_missed_its_goal(tmp_path):
    """No request failed, yet a latency threshold failed and goodput fell short: the page must
    say both in words, not leave a bold 0 % failed to speak for the run."""
    from musicsplit.loadtest.report import write_report

    rows = [(m, s * 1000, v, "api=jobs") for s in range(20)
            for m, v in (("vus", 5), ("separations_ok", 1), ("separation_seconds", 15.0))]
    latency = {"separation_seconds{api:jobs}": {"thresholds": {"p(99)<12": {"ok": False}}},
               "separations_failed": {"thresholds": {"count==0": {"ok": True}}}}
    runs = tmp_path / "runs"
    _run_named(runs, "spike", rows, {"metrics": latency, "musicsplit": {"scenario": "spike", "spec": {}}})
    goal = {"goodput": 0.9, "window_s": [5, 20], "goodput_over_capacity": 0.9, "goal": 0.95, "ok": False}
    _run_named(runs, "arrival", rows, {"metrics": {"separations_failed": latency["separations_failed"]},
                                       "musicsplit": {"scenario": "arrival", "spec": {}, "capacity": 1.0,
                                                      "load_factor": 2, "rate": 2.0, "goodput_goal": goal}})
    md = write_report(runs, tmp_path / "docs").read_text()
    verdict = md.split("## What failed", 1)[1].split("##", 1)[0]
    assert "threshold `separation_seconds{api:jobs}` p(99)<12 **failed** in spike" in verdict
    assert "goodput at 2x capacity 90.0% of capacity, **below its 95% goal**" in verdict
    assert "0 of 40 requests failed" in verdict
    spike = next(line for line in md.splitlines() if line.startswith("| spike |"))
    assert "**1 of 2 FAILED**: `separation_seconds{api:jobs}` p(99)<12" in spike and "| 0 |" in spike
    assert "**0" not in md  # no bold zero beside a failure
    assert "(goal >= 95%: **missed**)" in md


def test_the_report_says_first_which_thresholds_failed(two_levels, tmp_path):
    from musicsplit.loadtest.report import write_report

    summary = json.loads((tmp_path / "run.json").read_text())
    summary["metrics"] = {"separation_seconds{api:jobs}": {"thresholds": {"p(99)<12": {"ok": False}}},
                          "separations_failed": {"thresholds": {"count==0": {"ok": True}}}}
    (tmp_path / "run.json").write_text(json.dumps(summary))
    md = write_report(tmp_path, tmp_path / "docs").read_text()
    section = md.split("## What failed\n", 1)[1].split("\n## ", 1)[0]
    assert f"- `{tmp_path.name}`: threshold `separation_seconds{{api:jobs}}` p(99)<12 **failed** in run" in section
    assert "separations_failed" not in section, "a threshold that held is not listed as failed"
