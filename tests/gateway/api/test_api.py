"""The user-facing API against a real DSP-baseline predictor process: upload, job,
progress over WebSocket, downloads, cancel, batch, bad input, v2 pass-through."""

from __future__ import annotations

import io
import json
import threading
import time
import zipfile

import httpx
import numpy as np
import pytest
import soundfile as sf
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from musicsplit.localstack import wait_until
from musicsplit.v2client import V2Client

from tests.gateway.conftest import GatewayThread, make_settings, submit, tone, wait_job, wav_bytes


@pytest.fixture(scope="module")
def gw(baseline_url, tmp_path_factory):
    gateway = GatewayThread(make_settings(tmp_path_factory.mktemp("gw-api"), [("dsp-baseline", baseline_url, "eu")],
                                          max_queued_jobs=8, max_request_bytes=12 * 1024 * 1024,
                                          aliases={"fast": "dsp-baseline"})).start()
    yield gateway
    gateway.stop()


def test_upload_job_status_and_downloads(gw):
    mix = tone(9.0)
    r = submit(gw.url, wav_bytes(mix), user="alice", stems="vocals,drums")
    assert r.status_code == 202, r.text
    job = r.json()
    assert r.headers["location"] == f"/v1/separations/{job['id']}"
    assert job["status"] in ("queued", "running", "succeeded") and job["model"] == "dsp-baseline"
    doc = wait_job(gw.url, job["id"])
    assert doc["status"] == "succeeded", doc
    assert doc["model_version"] and doc["arm"] == "control"
    assert doc["progress"] == {"chunks_done": 3, "chunks_total": 3, "fraction": 1.0}  # 9 s in 4 s chunks
    assert 0.0 <= doc["quality_score"] <= 1.0 and doc["cost_usd"] > 0 and doc["audio_seconds"] == 9.0
    assert set(doc["stems"]) == {"vocals", "drums"}
    stem = httpx.get(gw.url + doc["stems"]["vocals"])
    assert stem.status_code == 200 and stem.headers["x-musicsplit-model"] == "dsp-baseline"
    audio, rate = sf.read(io.BytesIO(stem.content), always_2d=True)
    assert rate == 44100 and audio.shape == (mix.shape[1], 2)
    z = httpx.get(gw.url + doc["zip_url"])
    assert z.status_code == 200 and z.headers["content-type"] == "application/zip"
    assert sorted(zipfile.ZipFile(io.BytesIO(z.content)).namelist()) == ["drums.wav", "vocals.wav"]
    missing = httpx.get(f"{gw.url}/v1/separations/{job['id']}/stems/bass")
    assert missing.status_code == 404 and "has no stem 'bass'" in missing.json()["error"]


def test_flac_output_and_stems_add_up_to_the_mix(gw):
    mix = tone(3.0, seed=3)
    doc = wait_job(gw.url, submit(gw.url, wav_bytes(mix), output_format="flac").json()["id"])
    assert doc["status"] == "succeeded"
    total = 0
    for url in doc["stems"].values():
        r = httpx.get(gw.url + url)
        assert r.headers["content-type"] == "audio/flac"
        audio, _ = sf.read(io.BytesIO(r.content), always_2d=True)
        total = total + audio.T
    # The baseline is mixture-consistent; 24-bit flac and overlap-add keep that to ~1e-4.
    assert np.max(np.abs(total - mix)) < 1e-3


def test_websocket_streams_per_chunk_progress_to_completion(gw):
    job = submit(gw.url, wav_bytes(tone(20.0, seed=5)), user="bob").json()
    messages = []
    with connect(gw.url.replace("http", "ws") + job["progress_url"], open_timeout=10) as ws:
        for raw in ws:
            messages.append(json.loads(raw))
    assert messages[-1]["status"] == "succeeded" and messages[-1]["progress"] == 1.0
    assert messages[-1]["result_url"] == f"/v1/separations/{job['id']}"
    done = [m["chunks_done"] for m in messages]
    assert done == sorted(done), "progress only goes forward"
    assert len(set(done)) >= 3, f"per-chunk updates expected, got {done}"
    assert messages[-1]["chunks_total"] == 6


def test_websocket_for_unknown_job_says_so(gw):
    with pytest.raises(InvalidStatus) as refused:
        connect(gw.url.replace("http", "ws") + "/v1/separations/nope/progress")
    assert refused.value.response.status_code == 404
    assert json.loads(refused.value.response.body)["code"] == "not_found"


def test_delete_cancels_a_running_job(gw):
    job = submit(gw.url, wav_bytes(tone(60.0, channels=1, seed=7), subtype="PCM_16")).json()
    deadline = time.monotonic() + 20
    while httpx.get(f"{gw.url}/v1/separations/{job['id']}").json()["progress"]["chunks_done"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    with connect(gw.url.replace("http", "ws") + job["progress_url"], open_timeout=10) as ws:
        assert json.loads(ws.recv())["status"] == "running"
        r = httpx.delete(f"{gw.url}/v1/separations/{job['id']}")
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
        messages = [json.loads(m) for m in ws]  # the server closes after the terminal message
    assert messages[-1]["status"] == "cancelled" and messages[-1]["error"]["code"] == "cancelled"
    # The job's task has ended (its runner let it go): nothing it did after the cancel could still land.
    wait_until(lambda: job["id"] not in gw.service.runner._running, 10, "the cancelled job's task to end")
    doc = httpx.get(f"{gw.url}/v1/separations/{job['id']}").json()
    assert doc["status"] == "cancelled" and doc["stems"] == {}
    assert doc["progress"]["chunks_done"] < doc["progress"]["chunks_total"]
    r = httpx.get(f"{gw.url}/v1/separations/{job['id']}/stems.zip")
    assert r.status_code == 409 and "cancelled" in r.json()["error"]
    assert not (gw.service.results.job_dir(job["id"]) / "stems").exists(), "partial stems deleted"


@pytest.mark.parametrize("case,status,code,fragment", [
    ("not audio", 400, "bad_audio", "could not decode"),
    ("empty", 400, "bad_audio", "empty"),
    ("8 kHz", 400, "bad_audio", "below the minimum of 16000 Hz"),
    ("NaN", 400, "bad_audio", "NaN"),
    ("too short", 400, "bad_audio", "send at least"),
    ("oversize", 413, "payload_too_large", "over the limit"),
    ("bad format", 400, "bad_request", "output_format"),
    ("unknown model", 400, "bad_request", "unknown model"),
    ("no file", 400, "bad_request", "file"),
    ("bad stems", 400, "bad_request", "stem name"),
])
def test_bad_input_is_refused_with_a_message_saying_what_to_fix(gw, case, status, code, fragment):
    good = wav_bytes(tone(1.0))
    nan = tone(1.0)
    nan[0, 100] = np.nan
    if case == "no file":
        r = httpx.post(f"{gw.url}/v1/separations", data={"model": "default"}, timeout=10)
    else:
        data, form = {
            "not audio": (b"this is a text file, not a song", {}),
            "empty": (b"", {}),
            "8 kHz": (wav_bytes(tone(1.0, rate=8000), rate=8000), {}),
            "NaN": (wav_bytes(nan), {}),
            "too short": (wav_bytes(tone(0.01)), {}),
            "oversize": (b"\0" * (13 * 1024 * 1024), {}),
            "bad format": (good, {"output_format": "mp4"}),
            "unknown model": (good, {"model": "htdemucs_99"}),
            "bad stems": (good, {"stems": "vocals;drop table"}),
        }[case]
        r = submit(gw.url, data, **form)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["code"] == code and fragment in body["error"], body


def test_a_stem_the_model_does_not_make_is_refused_at_submit_naming_the_ones_it_does(gw, baseline_url):
    outputs = httpx.get(f"{baseline_url}/v2/models/dsp-baseline").json()["outputs"]
    stems = sorted(o["name"] for o in outputs)
    wait_until(lambda: gw.service.pool.stems("dsp-baseline"), 10, "the model's stems from its metadata")
    before = httpx.get(f"{gw.url}/v1/separations").json()
    r = submit(gw.url, wav_bytes(tone(1.0)), stems=f"{stems[0]},kazoo")
    assert r.status_code == 400 and r.json()["code"] == "bad_request", r.text
    assert "no stem 'kazoo'" in r.json()["error"] and str(stems) in r.json()["error"]
    assert httpx.get(f"{gw.url}/v1/separations").json() == before, "no job was made"


@pytest.mark.parametrize("user", ["carol", None])
def test_idempotency_key_returns_the_same_job(gw, user):
    from concurrent.futures import ThreadPoolExecutor

    data = wav_bytes(tone(1.0, seed=11))
    headers = {"Idempotency-Key": f"k-123-{user}", **({"X-User-Id": user} if user else {})}

    def post(_):
        r = httpx.post(f"{gw.url}/v1/separations", files={"file": ("a.wav", data)}, headers=headers, timeout=30)
        assert r.status_code == 202, r.text
        return r.json()["id"]

    with ThreadPoolExecutor(4) as pool:  # retried submits, some of them concurrent
        ids = set(pool.map(post, range(6)))
    assert len(ids) == 1


def test_batch_runs_one_job_per_file_and_reports_rejects(gw):
    files = [("files", (f"s{i}.wav", wav_bytes(tone(2.0, seed=20 + i)), "audio/wav")) for i in range(3)]
    files.append(("files", ("notes.txt", b"hello", "text/plain")))
    r = httpx.post(f"{gw.url}/v1/separations/batch", files=files, headers={"X-User-Id": "dave"}, timeout=30)
    assert r.status_code == 202, r.text
    batch = r.json()
    assert len(batch["jobs"]) == 3 and batch["rejected"][0]["filename"] == "notes.txt"
    assert batch["rejected"][0]["code"] == "bad_audio"
    deadline = time.monotonic() + 30
    while (view := httpx.get(f"{gw.url}/v1/batches/{batch['batch_id']}").json())["status"] == "running":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert view["status"] == "succeeded" and view["counts"] == {"succeeded": 3}
    assert httpx.get(f"{gw.url}/v1/batches/unknown").status_code == 404


def test_unknown_job_is_404(gw):
    r = httpx.get(f"{gw.url}/v1/separations/0123")
    assert r.status_code == 404 and r.json()["code"] == "not_found"


@pytest.mark.parametrize("alias", ["default", "fast", "dsp-baseline"])
def test_v2_pass_through_resolves_aliases_for_standard_clients(gw, alias):
    mix = tone(2.0, seed=13)
    with V2Client(gw.url, headers={"X-User-Id": "erin"}) as client:
        sep = client.separate(alias, mix, 44100)
    assert set(sep.stems) == {"drums", "bass", "other", "vocals"}
    assert sep.model_version and sep.stems["vocals"].shape == mix.shape
    np.testing.assert_allclose(sum(sep.stems.values()), mix, atol=1e-4)


def test_v2_pass_through_says_model_version_and_arm(gw):
    mix = tone(1.0)
    body = json.dumps({"inputs": [{"name": "audio", "datatype": "FP32", "shape": list(mix.shape),
                                   "data": mix.ravel().tolist(), "parameters": {"sample_rate": 44100}}],
                       "parameters": {"stems": "vocals"}})
    r = httpx.post(f"{gw.url}/v2/models/default/infer", content=body, headers={"X-User-Id": "erin"}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["x-musicsplit-model"] == "dsp-baseline" and r.headers["x-musicsplit-arm"] == "control"
    assert r.headers["x-musicsplit-model-version"] != "unknown"
    bad = httpx.post(f"{gw.url}/v2/models/default/infer", content=b'{"inputs": []}', timeout=30)
    assert bad.status_code == 400 and bad.json()["error"]  # the predictor's message, passed on
    assert httpx.get(f"{gw.url}/v2/models/default/ready").json()["ready"] is True
    assert httpx.get(f"{gw.url}/v2/health/ready").status_code == 200


def test_concurrent_duplicate_uploads_compute_once(baseline_url, gateway_factory):
    # Its own gateway, whose region label no other gateway in this process uses: the
    # upstream count read below is this gateway's alone, whatever else runs.
    gw = gateway_factory([("dsp-baseline", baseline_url, "dedup-only")], max_request_bytes=12 * 1024 * 1024)
    data = wav_bytes(tone(12.0, seed=17))
    before = _upstream_successes("dedup-only")
    results = [None] * 4

    def go(i):
        results[i] = submit(gw.url, data, user=f"dup{i}", stems="bass").json()["id"]

    threads = [threading.Thread(target=go, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    docs = [wait_job(gw.url, j) for j in results]
    assert all(d["status"] == "succeeded" for d in docs)
    assert len({d["id"] for d in docs}) == 4
    # One computation serves all four; the others join it or hit the cache.
    chunks = max(d["progress"]["chunks_total"] for d in docs)
    assert chunks == 4 and _upstream_successes("dedup-only") - before == chunks


def _upstream_successes(region: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("musicsplit_gateway_upstream_requests_total",
                                     {"model": "dsp-baseline", "region": region, "outcome": "success"}) or 0.0


def test_metrics_are_labelled_by_model_version_and_arm_never_by_user(gw):
    wait_job(gw.url, submit(gw.url, wav_bytes(tone(1.0, seed=77)), user="secret-user-42").json()["id"])
    text = httpx.get(gw.metrics_url).text
    jobs = [line for line in text.splitlines() if line.startswith("musicsplit_gateway_jobs_total{")]
    assert any('arm="control"' in line and 'model="dsp-baseline"' in line and "model_version=" in line
               for line in jobs), jobs
    assert "musicsplit_gateway_quality_score_bucket" in text and "musicsplit_gateway_v2_requests_total" in text
    assert "secret-user-42" not in text and "job_id" not in text
    # Not on the public API port: scrapers get their own.
    r = httpx.get(f"{gw.url}/metrics")
    assert r.status_code == 404 and r.json()["code"] == "not_found"


def test_rejection_reasons_are_scraped_before_the_first_rejection(gw):
    text = httpx.get(gw.metrics_url).text
    for reason in ("queue_full", "v2_saturated", "payload_too_large"):  # rate() and alerts need the series
        assert f'musicsplit_gateway_rejected_total{{reason="{reason}"}}' in text, reason


@pytest.mark.slow
def test_cancelling_one_of_two_duplicates_leaves_the_other_to_finish(gw):
    data = wav_bytes(tone(40.0, channels=1, seed=78), subtype="PCM_16")
    a = submit(gw.url, data, user="dup-a").json()["id"]
    b = submit(gw.url, data, user="dup-b").json()["id"]
    deadline = time.monotonic() + 20
    while {httpx.get(f"{gw.url}/v1/separations/{j}").json()["status"] for j in (a, b)} != {"running"}:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert httpx.delete(f"{gw.url}/v1/separations/{a}").json()["status"] == "cancelled"
    doc = wait_job(gw.url, b, timeout=60)
    assert doc["status"] == "succeeded" and doc["stems"]


def corrupt_flac(seconds: float = 40.0) -> bytes:
    """A flac whose header is fine and whose middle bytes are garbage (libsndfile: 'lost sync')."""
    data = bytearray(wav_bytes(tone(seconds, seed=23), fmt="FLAC", subtype="PCM_16"))
    mid = len(data) // 2
    data[mid:mid + 4096] = b"\xff" * 4096
    return bytes(data)


def test_a_file_corrupt_partway_through_is_bad_audio_not_a_500(gw):
    r = submit(gw.url, corrupt_flac(), filename="broken.flac")
    assert r.status_code == 400 and r.json()["code"] == "bad_audio", r.text
    assert "could not decode" in r.json()["error"]
    files = [("files", ("good.wav", wav_bytes(tone(1.0, seed=24)), "audio/wav")),
             ("files", ("broken.flac", corrupt_flac(), "audio/flac"))]
    r = httpx.post(f"{gw.url}/v1/separations/batch", files=files, headers={"X-User-Id": "erin"}, timeout=30)
    assert r.status_code == 202, r.text
    batch = r.json()
    assert len(batch["jobs"]) == 1 and batch["rejected"][0]["filename"] == "broken.flac"
    assert batch["rejected"][0]["code"] == "bad_audio"


@pytest.mark.slow
def test_concurrent_zip_downloads_each_get_the_whole_zip(gw):
    from concurrent.futures import ThreadPoolExecutor

    doc = wait_job(gw.url, submit(gw.url, wav_bytes(tone(20.0, seed=79)), user="zipper").json()["id"])
    assert doc["status"] == "succeeded", doc

    def download(_):
        r = httpx.get(gw.url + doc["zip_url"], timeout=60)
        assert r.status_code == 200, r.text
        with zipfile.ZipFile(io.BytesIO(r.content)) as z:
            assert z.testzip() is None
            return sorted(z.namelist())

    with ThreadPoolExecutor(6) as pool:  # the first downloads of a job all build its zip at once
        names = list(pool.map(download, range(6)))
    assert names == [["bass.wav", "drums.wav", "other.wav", "vocals.wav"]] * 6


def test_an_internal_error_is_a_stable_json_500_with_a_reference_and_the_detail_only_in_the_log(gw, caplog):
    doc = wait_job(gw.url, submit(gw.url, wav_bytes(tone(1.0, seed=80)), user="lost").json()["id"])
    assert doc["status"] == "succeeded", doc
    lost = gw.service.results.job_dir(doc["id"]) / "stems" / "vocals.wav"
    lost.unlink()  # deleted behind the gateway's back
    with caplog.at_level("ERROR"):
        r = httpx.get(gw.url + doc["stems"]["vocals"], timeout=10)
    assert r.status_code == 500 and r.headers["content-type"] == "application/json", r.text
    body = r.json()
    assert body["code"] == "internal_error" and "reference" in body["error"], body
    assert str(gw.settings.data_dir) not in r.text and "vocals.wav" not in r.text
    reference = body["error"].split("reference ", 1)[1].split(")")[0]
    assert any(reference in rec.getMessage() and str(lost) in (rec.exc_text or str(rec.exc_info))
               for rec in caplog.records), [rec.getMessage() for rec in caplog.records]


def test_secrets_in_the_settings_never_print():
    from musicsplit.gateway.settings import GatewaySettings

    secrets = {"sentry_dsn": "https://k3y@sentry.example/1", "unleash_api_token": "default:prod.t0ken",
               "redis_url": "redis://:pa55@redis:6379/0", "database_url": "postgresql://u:pa55w0rd@db:5432/ms"}
    settings = GatewaySettings(**secrets)
    shown = repr(settings) + str(settings) + settings.model_dump_json()
    for value in ("k3y", "t0ken", "pa55"):
        assert value not in shown, value
