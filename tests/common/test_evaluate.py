import json
import math

import numpy as np
import orjson
import pytest

from musicsplit.cli import main
from musicsplit.evaluate import evaluate, evaluate_separator
from musicsplit.golden import STEMS, golden_set
from musicsplit.predictor.baseline import DSPBaseline
from musicsplit.v2client import JSON_LENGTH_HEADER, SOURCE_HEADER, V2Client
from tests.fixtures.recorder import Recorder


@pytest.fixture(scope="module")
def items():
    return golden_set(n=2, seconds=3.0)


class Oracle:
    """Knows the answer: returns the golden stems themselves (plus a little noise)."""

    name, sources, samplerate, audio_channels = "oracle", list(STEMS), 44100, 2

    def __init__(self, items, noise=0.0):
        self.truth = {item.mixture.tobytes(): item for item in items}
        self.noise = noise

    def separate(self, samples, **_):
        item = self.truth[samples.tobytes()]
        return np.stack([item.stems[s] * (1 + self.noise) for s in self.sources])


def test_scores_follow_the_sdr_definition(items):
    perfect = evaluate_separator(Oracle(items), items)
    assert perfect.mean_sdr > 90
    # estimate = 1.1 x reference: SDR = 10 log10(1 / 0.1^2) = 20 dB for every stem
    scaled = evaluate_separator(Oracle(items, noise=0.1), items)
    assert scaled.per_stem == pytest.approx({s: 20.0 for s in STEMS}, abs=1e-3)
    assert [i.name for i in scaled.items] == [i.name for i in items]


def test_report_table_and_dict(items):
    report = evaluate_separator(DSPBaseline(), items, stems=["vocals", "bass"])
    assert list(report.per_stem) == ["bass", "vocals"]  # the golden set's order
    assert report.mean_sdr == pytest.approx(np.mean(list(report.per_stem.values())))
    table = report.format_table()
    assert "dsp-baseline" in table and "vocals" in table and f"{report.mean_sdr:9.2f}" in table
    doc = json.loads(json.dumps(report.to_dict()))
    assert doc["per_stem"].keys() == {"bass", "vocals"} and len(doc["items"]) == 2


def test_mismatched_rates_and_stems_are_refused(items):
    with pytest.raises(ValueError, match="Hz"):
        evaluate_separator(DSPBaseline(), golden_set(n=1, seconds=1.0, sample_rate=48000))
    with pytest.raises(ValueError, match="none of"):
        evaluate_separator(DSPBaseline(), items, stems=["guitar"])


@pytest.mark.slow
def test_over_http_matches_in_process(baseline_url, items):
    local = evaluate_separator(DSPBaseline(), items)
    with V2Client(baseline_url, timeout=60) as client:
        remote = evaluate(client, "dsp-baseline", items)
    assert remote.model == "dsp-baseline" and remote.model_version
    assert remote.per_stem == pytest.approx(local.per_stem, abs=0.01)
    assert all(0.0 <= i.quality_score <= 1.0 for i in remote.items)


def test_a_probe_marks_its_requests_and_asks_for_repeatable_scores(baseline_url, items):
    """What the canary probe sends: every request says it is a probe (the
    predictor's metrics keep it apart from users) and asks for no random shift."""
    with Recorder(forward_to=baseline_url) as proxy, V2Client(proxy.url, timeout=60) as client:
        probe = evaluate(client, "dsp-baseline", items, shifts=0, source="probe")
        user = evaluate(client, "dsp-baseline", items)
    sent = proxy.seen("/v2/models/dsp-baseline/infer")
    assert len(sent) == 2 * len(items)
    for req in sent[:len(items)]:
        assert req.headers[SOURCE_HEADER.lower()] == "probe"
        header = orjson.loads(req.body[:int(req.headers[JSON_LENGTH_HEADER.lower()])])
        assert header["parameters"]["shifts"] == 0
    assert all(SOURCE_HEADER.lower() not in req.headers for req in sent[len(items):])
    assert probe.per_stem == pytest.approx(user.per_stem, abs=1e-6)


def test_tiny_demucs_model_is_scored(predictor_url):
    with V2Client(predictor_url, timeout=120) as client:
        report = evaluate(client, "tiny", golden_set(n=1, seconds=2.0))
    assert set(report.per_stem) == set(STEMS)
    assert all(math.isfinite(v) for v in report.per_stem.values())
    assert report.model_version


@pytest.mark.slow
def test_eval_command(baseline_url, capsys):
    assert main(["eval", "--url", baseline_url, "--model", "dsp-baseline", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    # The built-in set: four synthetic items and the two real excerpts, reported apart.
    assert set(doc["per_stem"]) == set(STEMS) and len(doc["items"]) == 6
    assert [i["name"] for i in doc["items"]][4:] == ["real-lithium-112s", "real-lithium-196s"]
    assert doc["synthetic_mean_sdr"] > 3  # the DSP baseline's floor on the synthetic items (~6.5 dB measured)
    assert doc["real_mean_sdr"] < doc["synthetic_mean_sdr"]  # real music is harder (~2 dB measured)
    assert main(["eval", "--url", baseline_url, "--model", "dsp-baseline", "--stems", "vocals"]) == 0
    out = capsys.readouterr().out
    assert "vocals" in out and "drums" not in out
    assert main(["eval", "--url", baseline_url, "--model", "missing"]) == 1
    assert "404" in capsys.readouterr().err
