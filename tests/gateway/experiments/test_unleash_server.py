"""A real Unleash server: flip a flag and the model choice changes; stop the server and
the gateway keeps serving from its last state, across a gateway restart too."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from musicsplit.localstack import start_predictor, wait_until

from tests.gateway.conftest import GatewayThread, make_settings, tone
from tests.gateway.experiments.unleash_server import CLIENT_TOKEN, Unleash, available

pytestmark = pytest.mark.slow

FLAG = "musicsplit.model"


@pytest.fixture
def unleash(tmp_path, postgres):
    why = available()
    if why:  # CI installs it (.ci/install-gateway.sh): missing is a failure, never a skip
        pytest.fail(why)
    server = Unleash(postgres.database(), tmp_path / "unleash.log").wait()
    yield server
    server.stop()


def _choice(url: str, user: str) -> tuple[str, str]:
    mix = tone(0.3)
    body = json.dumps({"inputs": [{"name": "audio", "datatype": "FP32", "shape": list(mix.shape),
                                   "data": mix.ravel().tolist(), "parameters": {"sample_rate": 44100}}]})
    r = httpx.post(f"{url}/v2/models/default/infer", content=body, headers={"X-User-Id": user}, timeout=30)
    assert r.status_code == 200, r.text
    return r.headers["x-musicsplit-model"], r.headers["x-musicsplit-arm"]


def _eventually(url: str, user: str, expected: tuple[str, str], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while (got := _choice(url, user)) != expected:
        assert time.monotonic() < deadline, f"still {got}, expected {expected}"
        time.sleep(0.3)


def test_flag_flip_changes_the_model_and_the_last_state_survives_the_server(
        unleash, baseline_url, tmp_path, caplog):
    caplog.set_level("ERROR", logger="UnleashClient")  # its failed polls: the sign the gateway kept polling
    other = start_predictor("builtin://dsp-baseline", "baseline-b", log_dir=tmp_path)
    gateways = []
    try:
        project = "/projects/default/features"
        unleash.admin("POST", project, {"name": FLAG, "type": "experiment"})
        unleash.admin("POST", f"{project}/{FLAG}/environments/development/strategies", {
            "name": "flexibleRollout",
            "parameters": {"rollout": "100", "stickiness": "userId", "groupId": FLAG},
            "variants": [{"name": "treatment", "weight": 1000, "weightType": "variable", "stickiness": "userId",
                          "payload": {"type": "string", "value": "baseline-b"}}],
        })
        settings = make_settings(tmp_path / "gw", [("dsp-baseline", baseline_url, "eu"),
                                                   ("baseline-b", other.url, "eu")],
                                 default_model="dsp-baseline", unleash_url=unleash.url + "/api",
                                 unleash_api_token=CLIENT_TOKEN, unleash_refresh_s=1)
        gw = GatewayThread(settings).start()
        gateways.append(gw)
        _eventually(gw.url, "user-1", ("dsp-baseline", "control"))  # flag off in Unleash

        unleash.admin("POST", f"{project}/{FLAG}/environments/development/on")
        _eventually(gw.url, "user-1", ("baseline-b", "treatment"))

        def failed_polls() -> int:
            return sum("feature fetch failed" in r.getMessage() for r in caplog.records if r.name == "UnleashClient")

        seen = failed_polls()
        unleash.stop()  # Unleash goes away: polls fail, the last state stays
        wait_until(lambda: failed_polls() >= seen + 2, 15, "two polls of the stopped Unleash failed")
        for user in ("user-1", "user-2"):
            assert _choice(gw.url, user) == ("baseline-b", "treatment")

        gw.stop()  # and a gateway restarted while Unleash is down starts from that state
        gw = GatewayThread(settings).start()
        gateways.append(gw)
        assert gw.service.flags.source == "last-known"
        assert _choice(gw.url, "user-3") == ("baseline-b", "treatment")
    finally:
        for g in gateways:
            g.stop()
        other.stop()
