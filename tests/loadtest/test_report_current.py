"""docs/loadtest.md is what the committed runs say: regenerated from docs/loadtest/runs, it must not change.

The runs (k6's summary JSON with the samples the report reads) are kept in git so that every
figure on the page can be traced to a run; a page edited by hand, a run replaced without
regenerating the page, or a report change not re-run all fail here.
"""

from __future__ import annotations

import re
from pathlib import Path

from musicsplit.loadtest.report import write_report
from musicsplit.loadtest.results import read_run

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
RUNS = DOCS / "loadtest" / "runs"
CONFIGS = ("mixed-queue-8", "jobs-queue-8", "mixed-queue-64")
REFRESH = "bash loadtest/reproduce.sh (new runs), or musicsplit loadtest-report docs/loadtest/runs/* --docs docs"


def _kept() -> list[Path]:
    return [RUNS / c for c in CONFIGS if any((RUNS / c).glob("*.json"))]


def test_the_committed_runs_carry_their_samples_and_no_csv_is_committed():
    folders = _kept()
    assert [f.name for f in folders] == list(CONFIGS), "every configuration's runs are kept"
    for folder in folders:
        assert not list(folder.glob("*.csv*")), "raw per-sample CSVs stay out of git"
        for path in folder.glob("*.json"):
            assert path.stat().st_size < 256 * 1024, f"{path} is not a small summary"
            run = read_run(path)  # from its samples alone: no CSV beside it
            assert run.count("ok") > 0 and len(run.vus) > 0, path
            # The samples are those of the summary they sit in: k6's own counts agree.
            for outcome in ("ok", "refused", "failed"):
                counted = run.summary["metrics"].get(f"separations_{outcome}", {}).get("values", {}).get("count", 0)
                assert run.count(outcome) == counted, (path, outcome)


def test_the_page_is_regenerated_from_the_committed_runs_unchanged(tmp_path, monkeypatch):
    page = (DOCS / "loadtest.md").read_text()
    note = re.search(r"^> \*\*(.*)\*\*$", page, re.M)
    monkeypatch.chdir(ROOT)  # the page names its inputs relative to the repository
    folders = [f.relative_to(ROOT) for f in _kept()]
    fresh = write_report(folders, tmp_path, note=note.group(1) if note else None, plots=False).read_text()
    fresh = fresh.replace(f"--docs {tmp_path}", "--docs docs")
    assert fresh == page, f"docs/loadtest.md is stale: {REFRESH}"
    for image in re.findall(r"\]\((loadtest/[^)]+\.png)\)", page):
        assert (DOCS / image).is_file(), f"{image} is referenced but missing: {REFRESH}"
