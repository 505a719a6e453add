"""The golden-set probe: SDR of a served model version on the golden set
(musicsplit.evaluate through the v2 client)."""

from __future__ import annotations


def golden_sdr(url: str, model: str, timeout_s: float = 300.0) -> float:
    """Mean SDR (dB) of the model at `url` over the golden set (musicsplit.evaluate)."""
    from musicsplit.evaluate import evaluate
    from musicsplit.v2client import V2Client

    client = V2Client(url, timeout=timeout_s)
    try:
        return float(evaluate(client, model).mean_sdr)
    finally:
        close = getattr(client, "close", None)
        if close:
            close()
