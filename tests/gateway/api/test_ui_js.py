"""The page's pure functions, run by Node on the module files the browser loads (gateway/ui/):
refusals in words (429 with when to retry, 413 with the limit, 400 with what to fix), and the
listening room's agreement, which must be the gateway's own (shadow.agreement_db) on the same stems."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from musicsplit.gateway.upstream.shadow import agreement_db

UI = Path(__file__).resolve().parents[3] / "gateway" / "ui"


def node(script: str, data) -> object:
    assert shutil.which("node"), "Node is needed (.ci/install-ui.sh)"
    run = subprocess.run(["node", "--input-type=module", "-e", script], input=json.dumps(data),
                         capture_output=True, text=True, timeout=30, cwd=UI)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


READ_STDIN = "const data = JSON.parse((await import('node:fs')).readFileSync(0, 'utf8'));"


def test_refusals_say_what_to_do():
    said = node(READ_STDIN + """
        const { explain } = await import('./api.js');
        const headers = (h) => ({ get: (k) => h[k] ?? null });
        console.log(JSON.stringify(data.map(([status, body, h]) => explain(status, body, headers(h)))));""", [
        [429, {"error": "tenant a used its 60 requests this minute", "code": "quota_exceeded"}, {"Retry-After": "30"}],
        [413, {"error": "request is 7056432 bytes, over the limit of 6048576 bytes", "code": "payload_too_large"}, {}],
        [400, {"error": "sample rate 8000 Hz is below the minimum of 16000 Hz", "code": "bad_audio"}, {}],
        [503, {"error": "no predictor is answering", "code": "upstream_unavailable"}, {"Retry-After": "5"}],
    ])
    assert said[0].startswith("Refused (429") and "60 requests this minute" in said[0]
    assert "Try again in 30 s" in said[0]
    assert said[1].startswith("Refused (413") and "The limit is 6 MiB" in said[1]
    assert said[2] == "Refused (400, fix the request): sample rate 8000 Hz is below the minimum of 16000 Hz"
    assert "Try again in 5 s" in said[3]


@pytest.mark.parametrize("case", ["noisy", "half", "inverted", "identical", "both_silent", "silent_stable"])
def test_the_rooms_agreement_is_the_gateways(case):
    rng = np.random.default_rng(1)
    stable = rng.standard_normal((2, 4000)).astype(np.float32) * 0.3
    canary = {"noisy": stable + 0.05 * rng.standard_normal(stable.shape).astype(np.float32),
              "half": 0.5 * stable, "inverted": -stable, "identical": stable.copy(),
              "both_silent": np.zeros_like(stable), "silent_stable": stable}[case]
    if case in ("both_silent", "silent_stable"):
        stable = np.zeros_like(stable)
    js = node(READ_STDIN + """
        const { agreementDb } = await import('./room.js');
        const f = (chs) => chs.map((c) => Float32Array.from(c));
        console.log(JSON.stringify(agreementDb(f(data.stable), f(data.canary))));""",
              {"stable": stable.tolist(), "canary": canary.tolist()})
    assert js == pytest.approx(agreement_db(stable, canary), abs=0.01)
