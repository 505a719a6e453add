"""The result store in an S3-compatible bucket, shared by every gateway replica.

  s3://BUCKET/PREFIX/TENANT/jobs/<id>/input.wav        the validated float32 WAV (frames, rate,
                                                        channels, data offset in its metadata)
                                   .../chunks/<i>.npz   a finished chunk's stems (checkpoint)
                                   .../stems/<stem>.<ext>, stems.zip
  s3://BUCKET/PREFIX/TENANT/uploads/<upload id>         presigned uploads (uploads.py)

boto3 (its client is thread-safe) runs in worker threads, so a slow bucket
never stalls the event loop. A chunk is read with one ranged GET of the
input's samples; stems are written to local temp files and uploaded whole
at commit (an object appears whole or not at all). Downloads are 307s to
presigned GETs: the bytes go from the bucket to the client, not through the
gateway.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import weakref
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator
from urllib.parse import quote

import numpy as np
import soundfile as sf

from musicsplit.gateway.storage.jobstore import SeparationJob
from musicsplit.gateway.storage.results import (MEDIA_TYPES, Download, InputInfo, ResultMissing, Staging, decode_chunk,
                                        write_chunk)
from musicsplit.gateway.storage.results_local import LocalStemWriter, build_zip

UPLOAD_CONTENT_TYPE = "application/octet-stream"


def parse_storage_url(url: str) -> tuple[str, str]:
    """s3://bucket/prefix -> (bucket, prefix without slashes at the ends)."""
    rest = url.removeprefix("s3://")
    bucket, _, prefix = rest.partition("/")
    return bucket, prefix.strip("/")


def wav_data_offset(head: bytes) -> int:
    """Where the samples start in a RIFF/RF64 WAV whose first bytes are `head`."""
    if head[:4] not in (b"RIFF", b"RF64") or head[8:12] != b"WAVE":
        raise ValueError("not a WAV file")
    pos = 12
    while pos + 8 <= len(head):
        size = int.from_bytes(head[pos + 4:pos + 8], "little")
        if head[pos:pos + 4] == b"data":
            return pos + 8
        pos += 8 + size + (size & 1)
    raise ValueError("no data chunk in the WAV header")


def _is_missing(exc: Exception) -> bool:
    from botocore.exceptions import ClientError

    return isinstance(exc, ClientError) and exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey",
                                                                                          "NotFound")


class S3StemWriter(LocalStemWriter):
    """Stems streamed into local temp files, each uploaded whole at commit."""

    def __init__(self, store: "S3ResultStore", job: SeparationJob, output_format: str, sample_rate: int):
        super().__init__(Path(tempfile.mkdtemp(prefix="stems-", dir=store.staging.root)), output_format,
                         sample_rate)
        self.store, self.job = store, job

    def commit(self) -> list[str]:
        try:
            for name, tmp in self.close().items():
                self.store.upload_file(tmp, self.store.stem_key(self.job, name, self.ext),
                                       MEDIA_TYPES.get(self.ext, "application/octet-stream"))
        finally:
            shutil.rmtree(self.out_dir, ignore_errors=True)
        return sorted(self._files)

    def abort(self) -> None:
        self.close()
        shutil.rmtree(self.out_dir, ignore_errors=True)


class S3ResultStore:
    backend = "s3"

    def __init__(self, client, bucket: str, prefix: str, staging_dir: Path, *, url_expiry_s: float = 900.0):
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.staging = Staging(staging_dir)
        self.url_expiry_s = int(url_expiry_s)
        self._zip_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    @classmethod
    def from_settings(cls, settings) -> "S3ResultStore":
        import boto3
        from botocore.config import Config

        bucket, prefix = parse_storage_url(settings.storage_url)
        config = Config(signature_version="s3v4", connect_timeout=3, read_timeout=60,
                        retries={"mode": "standard", "max_attempts": 4},
                        # A custom endpoint (MinIO, moto) is usually one host for every bucket.
                        s3={"addressing_style": "path"} if settings.s3_endpoint_url else None)
        client = boto3.client("s3", endpoint_url=settings.s3_endpoint_url, region_name=settings.s3_region,
                              config=config)
        return cls(client, bucket, prefix, settings.staging_dir, url_expiry_s=settings.presigned_url_expiry_s)

    # -- keys --------------------------------------------------------------------------

    def tenant_prefix(self, tenant: str) -> str:
        # Tenant names come from configuration; quoted so none can reach outside its prefix.
        return "/".join(p for p in (self.prefix, quote(tenant, safe="")) if p) + "/"

    def job_prefix(self, job: SeparationJob) -> str:
        return f"{self.tenant_prefix(job.tenant)}jobs/{job.id}/"

    def stem_key(self, job: SeparationJob, stem: str, output_format: str) -> str:
        return f"{self.job_prefix(job)}stems/{stem}.{output_format}"

    def _input_key(self, job: SeparationJob) -> str:
        return f"{self.job_prefix(job)}input.wav"

    def _chunk_key(self, job: SeparationJob, index: int) -> str:
        return f"{self.job_prefix(job)}chunks/{index:05d}.npz"

    # -- blocking helpers (run in threads) ---------------------------------------------------

    def upload_file(self, path: Path, key: str, content_type: str, metadata: dict[str, str] | None = None) -> None:
        extra = {"ContentType": content_type, **({"Metadata": metadata} if metadata else {})}
        self.client.upload_file(str(path), self.bucket, key, ExtraArgs=extra)

    def head(self, key: str) -> dict | None:
        try:
            return self.client.head_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            if _is_missing(exc):
                return None
            raise

    def _get(self, key: str, byte_range: str | None = None) -> bytes:
        kw = {"Range": byte_range} if byte_range else {}
        return self.client.get_object(Bucket=self.bucket, Key=key, **kw)["Body"].read()

    def _delete_prefix(self, prefix: str) -> None:
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True})

    def presign(self, method: str, key: str, **params) -> str:
        return self.client.generate_presigned_url(method, Params={"Bucket": self.bucket, "Key": key, **params},
                                                  ExpiresIn=self.url_expiry_s)

    # -- inputs --------------------------------------------------------------------------

    def staging_path(self) -> Path:
        return self.staging.path()

    async def put_input(self, job: SeparationJob, staged: Path) -> None:
        def put() -> None:
            info = sf.info(str(staged))
            with open(staged, "rb") as f:
                offset = wav_data_offset(f.read(64 * 1024))
            meta = {"frames": str(info.frames), "sample-rate": str(info.samplerate), "channels": str(info.channels),
                    "data-offset": str(offset)}
            self.upload_file(staged, self._input_key(job), "audio/wav", meta)

        try:
            await asyncio.to_thread(put)
        finally:
            staged.unlink(missing_ok=True)

    async def has_input(self, job: SeparationJob) -> bool:
        return await asyncio.to_thread(self.head, self._input_key(job)) is not None

    async def _input_meta(self, job: SeparationJob) -> dict[str, str]:
        head = await asyncio.to_thread(self.head, self._input_key(job))
        if head is None:
            raise ResultMissing(f"s3://{self.bucket}/{self._input_key(job)} is missing")
        return head["Metadata"]

    async def input_info(self, job: SeparationJob) -> InputInfo:
        meta = await self._input_meta(job)
        return InputInfo(int(meta["frames"]), int(meta["sample-rate"]), int(meta["channels"]))

    async def read_input(self, job: SeparationJob, start: int, end: int) -> np.ndarray:
        meta = await self._input_meta(job)
        channels, offset = int(meta["channels"]), int(meta["data-offset"])
        end = min(end, int(meta["frames"]))
        if end <= start:
            return np.zeros((channels, 0), np.float32)
        frame = 4 * channels  # float32 samples, interleaved
        data = await asyncio.to_thread(self._get, self._input_key(job),
                                       f"bytes={offset + start * frame}-{offset + end * frame - 1}")
        return np.ascontiguousarray(np.frombuffer(data, dtype="<f4").reshape(-1, channels).T)

    async def delete_input(self, job: SeparationJob) -> None:
        await asyncio.to_thread(self.client.delete_object, Bucket=self.bucket, Key=self._input_key(job))

    # -- checkpoints -----------------------------------------------------------------------

    async def put_chunk(self, job: SeparationJob, index: int, stems: dict[str, np.ndarray]) -> None:
        await asyncio.to_thread(self._put_chunk, self._chunk_key(job, index), stems)

    def _put_chunk(self, key: str, stems: dict[str, np.ndarray]) -> None:
        tmp = self.staging.path(".npz")
        try:
            write_chunk(stems, tmp)
            self.upload_file(tmp, key, "application/octet-stream")
        finally:
            tmp.unlink(missing_ok=True)

    async def get_chunk(self, job: SeparationJob, index: int) -> dict[str, np.ndarray] | None:
        try:
            data = await asyncio.to_thread(self._get, self._chunk_key(job, index))
        except Exception as exc:
            if _is_missing(exc):
                return None
            raise
        return await asyncio.to_thread(decode_chunk, data)

    async def delete_chunks(self, job: SeparationJob) -> None:
        await asyncio.to_thread(self._delete_prefix, f"{self.job_prefix(job)}chunks/")

    # -- stems -------------------------------------------------------------------------------

    def stem_writer(self, job: SeparationJob, output_format: str, sample_rate: int) -> S3StemWriter:
        return S3StemWriter(self, job, output_format, sample_rate)

    async def put_stems(self, job: SeparationJob, files: dict[str, Path]) -> None:
        def put() -> None:
            for stem, path in files.items():
                ext = path.suffix.lstrip(".")
                self.upload_file(path, self.stem_key(job, stem, ext), MEDIA_TYPES.get(ext, "application/octet-stream"))

        await asyncio.to_thread(put)

    async def copy_stems(self, source: SeparationJob, job: SeparationJob, stems: list[str],
                         output_format: str) -> None:
        def copy() -> None:
            for s in stems:
                self.client.copy_object(Bucket=self.bucket, Key=self.stem_key(job, s, output_format),
                                        CopySource={"Bucket": self.bucket,
                                                    "Key": self.stem_key(source, s, output_format)})

        await asyncio.to_thread(copy)

    def _download_stems(self, job: SeparationJob, stems: list[str], output_format: str, dest: Path) -> dict[str, Path]:
        files = {}
        for s in stems:
            path = dest / f"{s}.{output_format}"
            try:
                self.client.download_file(self.bucket, self.stem_key(job, s, output_format), str(path))
            except Exception as exc:
                if _is_missing(exc):
                    raise ResultMissing(f"s3://{self.bucket}/{self.stem_key(job, s, output_format)} is missing") \
                        from None
                raise
            files[s] = path
        return files

    @asynccontextmanager
    async def stem_files(self, job: SeparationJob, stems: list[str],
                         output_format: str) -> AsyncIterator[dict[str, Path]]:
        scratch = Path(tempfile.mkdtemp(prefix="stems-", dir=self.staging.root))
        try:
            yield await asyncio.to_thread(self._download_stems, job, stems, output_format, scratch)
        finally:
            await asyncio.to_thread(shutil.rmtree, scratch, True)

    async def stem(self, job: SeparationJob, stem: str, output_format: str) -> Download:
        key = self.stem_key(job, stem, output_format)
        if await asyncio.to_thread(self.head, key) is None:
            raise ResultMissing(f"s3://{self.bucket}/{key} is missing")
        filename, media_type = f"{stem}.{output_format}", MEDIA_TYPES.get(output_format, "application/octet-stream")
        url = await asyncio.to_thread(self.presign, "get_object", key, ResponseContentType=media_type,
                                      ResponseContentDisposition=f'attachment; filename="{filename}"')
        return Download(media_type, filename, url=url)

    async def zip(self, job: SeparationJob, stems: list[str], output_format: str) -> Download:
        """The stems as one zip object, built once per replica (two replicas racing upload the same bytes)."""
        key, filename = f"{self.job_prefix(job)}stems.zip", f"{job.id}-stems.zip"
        async with self._zip_locks.setdefault(job.id, asyncio.Lock()):
            if await asyncio.to_thread(self.head, key) is None:
                await asyncio.to_thread(self._build_zip, job, stems, output_format, key)
        url = await asyncio.to_thread(self.presign, "get_object", key, ResponseContentType="application/zip",
                                      ResponseContentDisposition=f'attachment; filename="{filename}"')
        return Download("application/zip", filename, url=url)

    def _build_zip(self, job: SeparationJob, stems: list[str], output_format: str, key: str) -> None:
        scratch = Path(tempfile.mkdtemp(prefix="zip-", dir=self.staging.root))
        try:
            files = self._download_stems(job, stems, output_format, scratch)
            build_zip(files, scratch / "stems.zip")
            self.upload_file(scratch / "stems.zip", key, "application/zip")
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    # -- deletion, sweeping, readiness ------------------------------------------------------

    async def delete(self, job: SeparationJob, *, keep_results: bool = False) -> None:
        if keep_results:
            await self.delete_input(job)
            await self.delete_chunks(job)
        else:
            await asyncio.to_thread(self._delete_prefix, self.job_prefix(job))

    async def sweep_staging(self, older_than_s: float) -> int:
        return await asyncio.to_thread(self.staging.sweep, older_than_s)

    async def check(self) -> None:
        await asyncio.to_thread(self.client.head_bucket, Bucket=self.bucket)
