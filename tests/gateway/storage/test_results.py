"""The result store, the same tests on the local disk and on an S3 API (moto's server, through
boto3): inputs read back exactly at any range, checkpoints round-trip bit for bit, stems appear
whole at commit and download (S3: by presigned URL), deletion leaves nothing, every object of
a job sits under its tenant's prefix; presigned uploads stay in the caller's prefix."""

from __future__ import annotations

import io
import zipfile

import httpx
import numpy as np
import pytest
import soundfile as sf

from musicsplit.errors import BadRequest, NotFound, PayloadTooLarge, Unsupported
from musicsplit.gateway.storage.jobstore import SeparationJob
from musicsplit.gateway.storage.result_store import make_result_store
from musicsplit.gateway.settings import GatewaySettings
from musicsplit.gateway.jobs.uploads import Uploads

from tests.gateway.conftest import tone


def job(tenant="acme", job_id="a" * 32) -> SeparationJob:
    return SeparationJob(id=job_id, status="running", model="m", params={}, tenant=tenant)


@pytest.fixture(params=["local", "s3"])
def settings(request, tmp_path):
    if request.param == "local":
        return GatewaySettings(data_dir=tmp_path)
    s3 = request.getfixturevalue("s3")
    return GatewaySettings(data_dir=tmp_path, storage_url=f"s3://{s3.bucket()}/musicsplit/",
                           s3_endpoint_url=s3.endpoint, s3_region="us-east-1")


@pytest.fixture
def store(settings):
    return make_result_store(settings)


def staged(store, samples: np.ndarray, rate: int = 44100):
    path = store.staging_path()
    sf.write(path, samples.T, rate, format="WAV", subtype="FLOAT")  # what intake writes
    return path


async def test_an_input_reads_back_exactly_at_any_range(store):
    mix = tone(3.0, rate=48000, seed=3)
    j = job()
    assert not await store.has_input(j)
    await store.put_input(j, staged(store, mix, 48000))
    assert await store.has_input(j)
    info = await store.input_info(j)
    assert (info.frames, info.sample_rate, info.channels) == (mix.shape[1], 48000, 2)
    for start, end in [(0, 1), (0, mix.shape[1]), (12345, 67890), (mix.shape[1] - 7, mix.shape[1])]:
        np.testing.assert_array_equal(await store.read_input(j, start, end), mix[:, start:end])
    await store.delete_input(j)
    assert not await store.has_input(j)


async def test_checkpoints_round_trip_bit_for_bit(store):
    j = job()
    stems = {"vocals": np.random.default_rng(1).standard_normal((2, 4000)).astype(np.float32),
             "drums": np.full((2, 4000), np.float32(1 / 3))}
    assert await store.get_chunk(j, 3) is None
    await store.put_chunk(j, 3, stems)
    back = await store.get_chunk(j, 3)
    assert set(back) == set(stems)
    for name in stems:
        assert back[name].dtype == np.float32 and back[name].tobytes() == stems[name].tobytes()
    await store.delete_chunks(j)
    assert await store.get_chunk(j, 3) is None


async def download(store, d) -> bytes:
    if d.url:
        r = httpx.get(d.url)
        assert r.status_code == 200, r.text
        return r.content
    return d.path.read_bytes()


async def test_stems_appear_at_commit_and_download_whole(store):
    j = job()
    rng = np.random.default_rng(2)
    blocks = [{"vocals": rng.uniform(-0.5, 0.5, (2, 1000)).astype(np.float32),
               "bass": rng.uniform(-0.5, 0.5, (2, 1000)).astype(np.float32)} for _ in range(3)]
    writer = store.stem_writer(j, "wav", 44100)
    for block in blocks:
        for name, audio in block.items():
            writer.write(name, audio)
    with pytest.raises(Exception):  # nothing visible before the commit
        await store.stem(j, "vocals", "wav")
    assert writer.commit() == ["bass", "vocals"]
    d = await store.stem(j, "vocals", "wav")
    assert d.media_type == "audio/wav" and d.filename == "vocals.wav"
    got, rate = sf.read(io.BytesIO(await download(store, d)), dtype="float32", always_2d=True)
    assert rate == 44100
    np.testing.assert_array_equal(got.T, np.concatenate([b["vocals"] for b in blocks], axis=1))
    z = zipfile.ZipFile(io.BytesIO(await download(store, await store.zip(j, ["bass", "vocals"], "wav"))))
    assert sorted(z.namelist()) == ["bass.wav", "vocals.wav"]
    async with store.stem_files(j, ["bass"], "wav") as files:
        assert sf.read(files["bass"], dtype="float32")[0].shape == (3000, 2)
    # Another job (a cache hit, a deduplicated job) gets the same stems.
    other = job(tenant="globex", job_id="b" * 32)
    await store.copy_stems(j, other, ["vocals"], "wav")
    assert await download(store, await store.stem(other, "vocals", "wav")) == await download(store, d)
    third = job(job_id="c" * 32)
    async with store.stem_files(j, ["vocals", "bass"], "wav") as files:
        await store.put_stems(third, files)
    assert await download(store, await store.stem(third, "bass", "wav"))
    # An aborted writer leaves nothing.
    aborted = store.stem_writer(job(job_id="d" * 32), "flac", 44100)
    aborted.write("vocals", blocks[0]["vocals"])
    aborted.abort()
    with pytest.raises(Exception):
        await store.stem(job(job_id="d" * 32), "vocals", "flac")


async def test_delete_leaves_nothing_and_keep_results_keeps_only_the_stems(store, settings, s3_or_none):
    j = job()
    await store.put_input(j, staged(store, tone(1.0)))
    await store.put_chunk(j, 0, {"vocals": np.zeros((2, 10), np.float32)})
    writer = store.stem_writer(j, "wav", 44100)
    writer.write("vocals", np.zeros((2, 10), np.float32))
    writer.commit()
    await store.delete(j, keep_results=True)
    assert not await store.has_input(j) and await store.get_chunk(j, 0) is None
    assert await store.stem(j, "vocals", "wav")
    if s3_or_none:
        bucket = settings.storage_url[5:].split("/")[0]
        assert s3_or_none.keys(bucket) == [f"musicsplit/acme/jobs/{j.id}/stems/vocals.wav"]
    await store.delete(j)
    with pytest.raises(Exception):
        await store.stem(j, "vocals", "wav")
    if s3_or_none:
        assert s3_or_none.keys(bucket) == []
    else:
        assert not store.job_dir(j.id).exists()


@pytest.fixture
def s3_or_none(settings, request):
    return request.getfixturevalue("s3") if settings.storage_url else None


async def test_check_says_when_the_store_cannot_be_used(store, settings, tmp_path):
    await store.check()
    if settings.storage_url:
        broken = make_result_store(settings.model_copy(update={"storage_url": "s3://no-such-bucket"}))
    else:
        (tmp_path / "ro").mkdir()
        broken = make_result_store(settings.model_copy(update={"data_dir": tmp_path / "ro"}))
        broken.staging.root.rmdir()
    with pytest.raises(Exception):
        await broken.check()


# -- presigned uploads -----------------------------------------------------------------------------

@pytest.fixture
def s3_settings(s3, tmp_path):
    return GatewaySettings(data_dir=tmp_path, storage_url=f"s3://{s3.bucket()}/musicsplit",
                           s3_endpoint_url=s3.endpoint, s3_region="us-east-1", max_upload_bytes=2_000_000)


async def test_an_upload_goes_to_the_callers_prefix_and_only_the_caller_reads_it(s3, s3_settings, tmp_path):
    uploads = Uploads(make_result_store(s3_settings), s3_settings.max_upload_bytes)
    data = b"\x00\x01" * 50_000
    slot = await uploads.create("acme", len(data))
    assert slot.headers["Content-Type"] == "application/octet-stream" and slot.max_bytes == 2_000_000
    r = httpx.put(slot.url, content=data, headers=slot.headers)
    assert r.status_code == 200, r.text
    bucket = s3_settings.storage_url[5:].split("/")[0]
    assert s3.keys(bucket) == [f"musicsplit/acme/uploads/{slot.upload_id}"]
    assert await uploads.fetch("acme", slot.upload_id, tmp_path / "got") == len(data)
    assert (tmp_path / "got").read_bytes() == data
    with pytest.raises(NotFound):  # another tenant naming the same id reads under its own prefix
        await uploads.fetch("globex", slot.upload_id, tmp_path / "theirs")
    for bad in ("../acme/uploads/" + slot.upload_id, "https://169.254.169.254/latest", slot.upload_id.upper()):
        with pytest.raises(BadRequest):
            await uploads.fetch("acme", bad, tmp_path / "x")
    assert await uploads.sweep(older_than_s=3600) == 0
    assert await uploads.sweep(older_than_s=-60) == 1 and s3.keys(bucket) == []


async def test_an_upload_over_the_limit_is_refused_before_and_after_the_put(s3, s3_settings, tmp_path):
    uploads = Uploads(make_result_store(s3_settings), s3_settings.max_upload_bytes)
    with pytest.raises(PayloadTooLarge):
        await uploads.create("acme", 2_000_001)
    with pytest.raises(BadRequest):
        await uploads.create("acme", 0)
    # A client that put more than it declared (a bucket that does not enforce the signed length):
    # refused at use, from the HEAD, without reading it, and deleted.
    slot = await uploads.create("acme", 10)
    key = uploads.key("acme", slot.upload_id)
    s3.client().put_object(Bucket=uploads.store.bucket, Key=key, Body=b"x" * 2_000_001)
    with pytest.raises(PayloadTooLarge):
        await uploads.fetch("acme", slot.upload_id, tmp_path / "big")
    assert not (tmp_path / "big").exists() and uploads.store.head(key) is None


async def test_a_gateway_with_local_storage_offers_no_uploads(tmp_path):
    uploads = Uploads(make_result_store(GatewaySettings(data_dir=tmp_path)), 10)
    assert not uploads.available
    with pytest.raises(Unsupported, match="STORAGE_URL=s3://"):
        await uploads.create("acme", 5)
