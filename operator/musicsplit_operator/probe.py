"""The golden-set probe: SDR of a served model version on the golden set
(musicsplit.evaluate through the v2 client)."""

from __future__ import annotations

PROBE_SOURCE = "probe"  # X-Musicsplit-Source: the predictor counts these apart from users


def golden_sdr(url: str, model: str, timeout_s: float = 300.0) -> float:
    """Mean SDR (dB) of the model at `url` over the golden set. Deterministic:
    the fixed golden set, no random shift (shifts=0), so one version always
    scores the same and a difference between versions is the models'."""
    from musicsplit.evaluate import evaluate
    from musicsplit.v2client import V2Client

    with V2Client(url, timeout=timeout_s) as client:
        return float(evaluate(client, model, shifts=0, source=PROBE_SOURCE).mean_sdr)
