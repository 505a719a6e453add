"""Golden sets fetched from storage with KServe's own storage code (in a child
process): from a real S3 API (moto) and a file:// mount; only under the
allowlist; stopped when too big or too slow; cached by URI and content, the
cache bounded."""

from __future__ import annotations

import io
import os
import tarfile
import threading
import time

import pytest

from musicsplit.operator import goldenset
from musicsplit.operator.goldenset import GoldenSetError
from musicsplit.operator.goldenstore import GoldenStore, allowed, tree_bytes
from musicsplit.operator.spec import GoldenSetSpec
from tests.fixtures.recorder import Recorder
from tests.fixtures.s3 import MotoS3
from tests.operator.test_goldenset import track_files

MiB = 1 << 20


def store(tmp_path, **kw) -> GoldenStore:
    args = dict(allowlist=["s3://golden/", f"file://{tmp_path}/sets", "http://127.0.0.1:9/"], max_set_bytes=4 * MiB,
                max_cache_bytes=16 * MiB, timeout_s=60, ttl_s=600)
    return GoldenStore(tmp_path / "cache", **{**args, **kw})


def write_set(root, tracks=("a", "b"), seed=0):
    for i, t in enumerate(tracks):
        (root / t).mkdir(parents=True, exist_ok=True)
        for part, blob in track_files(seed + i).items():
            (root / t / f"{part}.wav").write_bytes(blob)
    return root


def test_allowlist_prefixes_match_at_path_boundaries():
    allow = ["s3://golden/sets", "file:///mnt/golden/"]
    assert allowed("s3://golden/sets/musdb", allow) and allowed("s3://golden/sets", allow)
    assert not allowed("s3://golden/sets-private/x", allow) and not allowed("s3://other/sets", allow)
    assert not allowed("file:///mnt/golden/../../var/run/secrets", allow)
    assert not allowed("s3://golden/sets/x", [])


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = MotoS3.start(tmp_path_factory.mktemp("s3"))
    try:
        yield server
    finally:
        server.stop()


def test_a_set_in_s3_is_fetched_and_read_as_tracks(s3, tmp_path, monkeypatch):
    for k, v in s3.env.items():
        monkeypatch.setenv(k, v)  # the child finds the endpoint and credentials as KServe's initializer does
    client = s3.client()
    client.create_bucket(Bucket="golden")
    local = write_set(tmp_path / "src")
    for path in local.rglob("*.wav"):
        client.upload_file(str(path), "golden", f"musdb/{path.relative_to(local).as_posix()}")
    gs = store(tmp_path)
    with gs.pinned() as fetch:
        loaded = goldenset.load(GoldenSetSpec(storage_uri="s3://golden/musdb"), "ml", fetch=fetch)
    assert loaded.ref == "storageUri:s3://golden/musdb"
    assert [t.name for t in loaded.tracks] == ["a", "b"] and loaded.tracks[0].source == "s3://golden/musdb"
    with gs.pinned() as fetch:
        with pytest.raises(GoldenSetError) as e:
            fetch("s3://golden/nothing-here")
    assert e.value.reason == goldenset.UNAVAILABLE
    assert "s3://golden/nothing-here could not be fetched" in str(e.value) and "No model found" in str(e.value)


def test_a_set_is_cached_by_uri_and_content_until_its_ttl(tmp_path):
    src = write_set(tmp_path / "sets" / "v1")
    uri = f"file://{src}"
    gs = store(tmp_path)
    with gs.pinned() as fetch:
        first, digest = fetch(uri)
        (src / "a" / "vocals.wav").write_bytes(track_files(7)["vocals"])  # edited at the source
        t0 = time.monotonic()
        again, same = fetch(uri)
        assert (again, same) == (first, digest) and time.monotonic() - t0 < 1  # from the cache: no child started
    expired = store(tmp_path, ttl_s=0)
    with expired.pinned() as fetch:
        _, edited = fetch(uri)
    assert edited != digest  # fetched again after the ttl: the edit is seen
    assert len(list((tmp_path / "cache" / "entries").iterdir())) == 1  # the old content's entry went


def test_the_cache_stays_bounded_but_keeps_what_a_probe_reads(tmp_path):
    sets = [write_set(tmp_path / "sets" / f"s{i}", tracks=("a",), seed=10 * i) for i in range(3)]
    size = tree_bytes(sets[0])
    gs = store(tmp_path, max_cache_bytes=int(size * 2.5), max_set_bytes=size * 2)
    with gs.pinned() as fetch_a:
        a, _ = fetch_a(f"file://{sets[0]}")
        for s in sets[1:]:
            with gs.pinned() as fetch:
                fetch(f"file://{s}")
        assert a.exists()  # pinned by the probe still reading it
    entries = list((tmp_path / "cache" / "entries").iterdir())
    assert len(entries) == 2 and sum(tree_bytes(e) for e in entries) <= size * 2.5


@pytest.mark.parametrize("uri, reason, words", [
    ("s3://elsewhere/golden", goldenset.NOT_ALLOWED, "is not under the operator's allowlist"),
    ("file:///etc", goldenset.NOT_ALLOWED, "MUSICSPLIT_OPERATOR_GOLDEN_STORAGE_ALLOWLIST"),
    ("http://127.0.0.1:9/golden.tar.gz", goldenset.UNAVAILABLE, "could not be fetched"),
])
def test_a_set_that_cannot_be_fetched_is_refused_with_a_reason(tmp_path, uri, reason, words):
    with store(tmp_path).pinned() as fetch:
        with pytest.raises(GoldenSetError) as e:
            fetch(uri)
    assert e.value.reason == reason and words in str(e.value)


def _archive(root) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(root, arcname=".")
    return buf.getvalue()


@pytest.mark.slow
def test_a_set_too_big_or_too_slow_is_stopped(tmp_path):
    src = write_set(tmp_path / "sets" / "big", tracks=("a", "b", "c"))
    with store(tmp_path, max_set_bytes=tree_bytes(src) // 2).pinned() as fetch:
        with pytest.raises(GoldenSetError) as e:
            fetch(f"file://{src}")
    assert e.value.reason == goldenset.INVALID and "holds over" in str(e.value)
    assert not list((tmp_path / "cache" / "partial").iterdir())  # nothing half-fetched left behind

    gate = threading.Event()
    body = _archive(write_set(tmp_path / "archive", tracks=("a",)))
    with Recorder(lambda req: (200, {"content-type": "application/gzip"}, body), gate=gate) as slow:
        t0 = time.monotonic()
        with store(tmp_path, timeout_s=3, allowlist=[slow.url]).pinned() as fetch:
            with pytest.raises(GoldenSetError) as e:
                fetch(f"{slow.url}/golden.tar.gz")
        gate.set()
    assert e.value.reason == goldenset.UNAVAILABLE and "not fetched within 3 s" in str(e.value)
    assert time.monotonic() - t0 < 20
    # The same archive, answered at once: unpacked into tracks.
    with Recorder(lambda req: (200, {"content-type": "application/gzip"}, body)) as quick:
        with store(tmp_path, allowlist=[quick.url]).pinned() as fetch:
            root, _ = fetch(f"{quick.url}/golden.tar.gz")
            assert [t.name for t in goldenset.directory_tracks("x", root)] == ["a"]
    assert os.listdir(tmp_path / "cache" / "partial") == []
