"""docs/model-cards/ holds one card per servable model, generated from its facts and measurements."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

from musicsplit.predictor.loading import PRETRAINED

ROOT = Path(__file__).resolve().parents[2]
CARDS = ROOT / "docs" / "model-cards"


def test_every_card_is_what_the_generator_writes():
    proc = subprocess.run([sys.executable, "benchmarks/model_cards.py", "--check"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_the_models_users_can_serve_have_cards_with_published_sdr_and_measured_cost():
    facts = yaml.safe_load((CARDS / "models.yaml").read_text())
    assert {"htdemucs", "htdemucs_ft", "htdemucs_6s", "mdx_extra", "dsp-baseline"} <= set(facts)
    for name in facts:
        assert name in PRETRAINED or name == "dsp-baseline", name  # a name `--model_dir` accepts
        card = (CARDS / f"{name}.md").read_text()
        assert re.search(r"SDR[^\n]*: \*\*", card) and "## Intended use" in card and "## Limitations" in card, name
        # the runbooks escalate a model's quality to the owner its card names
        assert re.search(r"^\| owner \| \S", card, re.M), name
        if name != "dsp-baseline":
            assert "| CPU, 1 core | bf16 |" in card, name  # measured speed and cost
    assert "9.00 dB" in (CARDS / "htdemucs.md").read_text()
    assert "MUSDB18 test set" in (CARDS / "mdx_extra.md").read_text()
    assert "6.62 dB" in (CARDS / "dsp-baseline.md").read_text()
