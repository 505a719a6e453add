"""The API the web UI uses beyond the separations API (gateway/api/routers/ui.py, gateway/experiments/verdicts.py):
the page's files and their headers, `ui_enabled`, the model list with rollouts, a job's place in
the queue, the v2 pass-through pinned to a version, and listening-room verdicts (validated against
the rollout the gateway knows, per tenant, durable in SQLite and PostgreSQL). The browser test:
tests/gateway/api/test_ui.py."""

from __future__ import annotations

import httpx

from musicsplit.gateway.upstream.canaries import Canary
from musicsplit.gateway.storage.database import open_engine
from musicsplit.gateway.experiments.verdicts import VerdictIn, VerdictStore
from musicsplit.v2client import encode_request
from tests.gateway.conftest import bearer, submit, tenants_file, tone, wav_bytes

MODEL = "dsp-baseline"
KEYS = {"a": "key-a-1", "b": "key-b-2"}


class Rollouts:
    """The canary directory (canaries.py) as it reads once a SeparationModel publishes a canary step;
    the real directory reading kmock's API: tests/gateway/api/test_ui.py."""

    namespace = "default"

    def __init__(self, canary: Canary):
        self.canary = canary

    def get(self, model):
        return self.canary if model == self.canary.model else None


def verdict(**over) -> dict:
    return {"model": MODEL, "stable_version": "builtin-1", "canary_version": "2.0", "verdict": "better",
            "note": "cleaner vocals", "track": "song.wav", "agreement_db": {"vocals": 21.5}, **over}


def test_the_page_is_served_with_its_headers_and_the_setting_turns_it_off(gateway_factory, baseline_url):
    gw = gateway_factory([(MODEL, baseline_url, "local")])
    r = httpx.get(f"{gw.url}/ui", follow_redirects=True)
    assert r.status_code == 200 and "<title>musicsplit</title>" in r.text
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff"
    js = httpx.get(f"{gw.url}/ui/app.js")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]
    assert httpx.get(f"{gw.url}/ui/%2e%2e/settings.py").status_code == 404  # nothing outside gateway/ui/
    off = gateway_factory([(MODEL, baseline_url, "local")], ui_enabled=False)
    assert httpx.get(f"{off.url}/ui/").status_code == 404
    assert httpx.get(f"{off.url}/ui").status_code == 404
    assert httpx.get(f"{off.url}/v1/models").status_code == 200  # the API stays: other clients use it


def test_models_list_their_rollout_and_the_pin_picks_the_version_or_says_409(gateway_factory, baseline_url,
                                                                              tmp_path):
    gw = gateway_factory([(MODEL, baseline_url, "local")], aliases={"fast": MODEL},
                         api_keys_file=tenants_file(tmp_path / "t.yaml", {"a": {}}, {"a": KEYS["a"]}))
    assert httpx.get(f"{gw.url}/v1/models").status_code == 401
    models = httpx.get(f"{gw.url}/v1/models", headers=bearer(KEYS["a"])).json()
    assert models["models"] == [{"name": MODEL, "ready": True, "rollout": None}]
    assert models["aliases"] == {"fast": MODEL}
    gw.service.shadow.directory = Rollouts(Canary(MODEL, baseline_url, "2.0", "builtin-1"))
    models = httpx.get(f"{gw.url}/v1/models", headers=bearer(KEYS["a"])).json()
    assert models["models"][0]["rollout"] == {"stable_version": "builtin-1", "canary_version": "2.0"}

    body, headers = encode_request(encoded=wav_bytes(tone(0.5)))
    headers = {**headers, **bearer(KEYS["a"])}
    ok = httpx.post(f"{gw.url}/v2/models/fast/versions/builtin-1/infer", content=body, headers=headers, timeout=30)
    assert ok.status_code == 200 and ok.headers["x-musicsplit-model-version"] == "builtin-1"
    # The "canary" here is the stable's own URL: it answers builtin-1, never 2.0.
    wrong = httpx.post(f"{gw.url}/v2/models/{MODEL}/versions/2.0/infer", content=body, headers=headers, timeout=30)
    assert wrong.status_code == 409 and "version '2.0'" in wrong.json()["error"]
    gw.service.shadow.directory = Rollouts(Canary(MODEL, "http://127.0.0.1:9", "2.0", "builtin-1"))  # nobody there
    down = httpx.post(f"{gw.url}/v2/models/{MODEL}/versions/2.0/infer", content=body, headers=headers, timeout=30)
    assert down.status_code == 503 and down.headers["retry-after"] and "canary 2.0" in down.json()["error"]
    bad = httpx.post(f"{gw.url}/v2/models/{MODEL}/versions/builtin-1/infer", content=b"{}", timeout=30,
                     headers={**bearer(KEYS["a"]), "Content-Type": "application/json"})
    assert bad.status_code == 400
    assert gw.service.v2_slots.free == gw.service.v2_slots.size  # every slot given back


def test_a_queued_job_says_its_place(gateway_factory, baseline_url):
    gw = gateway_factory([(MODEL, baseline_url, "local")], max_running_jobs=0)  # this replica runs no jobs
    first, second = (submit(gw.url, wav_bytes(tone(0.5, seed=s)), model=MODEL).json()["id"] for s in (1, 2))
    assert httpx.get(f"{gw.url}/v1/separations/{first}/queue").json() == {"status": "queued", "position": 1,
                                                                          "queued": 2}
    assert httpx.get(f"{gw.url}/v1/separations/{second}/queue").json()["position"] == 2
    httpx.delete(f"{gw.url}/v1/separations/{first}")
    assert httpx.get(f"{gw.url}/v1/separations/{first}/queue").json() == {"status": "cancelled", "position": None,
                                                                          "queued": 1}
    assert httpx.get(f"{gw.url}/v1/separations/{second}/queue").json()["position"] == 1
    assert httpx.get(f"{gw.url}/v1/separations/nope/queue").status_code == 404


def test_verdicts_need_the_rollout_under_way_and_each_tenant_sees_its_own(gateway_factory, baseline_url, tmp_path):
    gw = gateway_factory([(MODEL, baseline_url, "local")],
                         api_keys_file=tenants_file(tmp_path / "t.yaml", {"a": {}, "b": {}}, KEYS))
    a, b = bearer(KEYS["a"], user="ana"), bearer(KEYS["b"])
    assert httpx.post(f"{gw.url}/v1/verdicts", json=verdict(), headers=a).status_code == 409  # no rollout known
    gw.service.shadow.directory = Rollouts(Canary(MODEL, "http://canary", "2.0", "builtin-1"))
    stale = httpx.post(f"{gw.url}/v1/verdicts", json=verdict(canary_version="1.9"), headers=a)
    assert stale.status_code == 409 and "now: stable builtin-1, canary 2.0" in stale.json()["error"]
    wrong = httpx.post(f"{gw.url}/v1/verdicts", json=verdict(verdict="great"), headers=a)
    assert wrong.status_code == 400 and "verdict" in wrong.json()["error"]
    long = httpx.post(f"{gw.url}/v1/verdicts", json=verdict(note="x" * 2001), headers=a)
    assert long.status_code == 400 and "note" in long.json()["error"]
    made = httpx.post(f"{gw.url}/v1/verdicts", json=verdict(), headers=a)
    assert made.status_code == 201 and made.json()["tenant"] == "a" and made.json()["user_id"] == "ana"
    httpx.post(f"{gw.url}/v1/verdicts", json=verdict(verdict="worse"), headers=b)
    mine = httpx.get(f"{gw.url}/v1/verdicts", headers=a).json()
    assert [v["id"] for v in mine["verdicts"]] == [made.json()["id"]]
    assert mine["counts"] == {MODEL: {"2.0": {"better": 1, "same": 0, "worse": 0}}}
    assert httpx.get(f"{gw.url}/v1/verdicts", headers=b).json()["counts"][MODEL]["2.0"]["worse"] == 1


async def test_verdicts_are_kept_in_the_job_store_database(job_store_url):
    engine = await open_engine(job_store_url)
    try:
        store = VerdictStore(engine)
        for i, judged in enumerate(("same", "worse", "same")):
            await store.record(VerdictIn(**verdict(verdict=judged, track=f"t{i}.wav")), "a", None)
        await store.record(VerdictIn(**verdict(model="other")), "a", None)
    finally:
        await engine.dispose()
    engine = await open_engine(job_store_url)  # a new process's engine reads what the last one wrote
    try:
        found = await VerdictStore(engine).list("a", model=MODEL, limit=2)
    finally:
        await engine.dispose()
    assert [v.track for v in found.verdicts] == ["t2.wav", "t1.wav"]  # newest first, at most `limit`
    assert found.counts == {MODEL: {"2.0": {"better": 0, "same": 2, "worse": 1}}}
