"""Where a job's input, chunk checkpoints and stems live: the result store.

The interface is what the gateway needs: keep a validated input, read any
range of it (a chunk), keep each finished chunk's stems (a checkpoint another
replica can resume from), write stems block by block, hand out a download, a
zip, delete, sweep. Two implementations:

- `LocalResultStore` (results_local.py, the embedded default): files under
  data_dir/jobs/<id>/, streamed by the gateway; one replica.
- `S3ResultStore` (results_s3.py): an S3-compatible bucket shared by every
  replica, keys `PREFIX/TENANT/jobs/<id>/...`; downloads are redirects to
  presigned URLs, and clients may upload large inputs straight to the bucket
  (presigned PUT, uploads.py).

Every method takes the job (its id and tenant) rather than an id alone, so a
store can keep each tenant's objects under the tenant's own prefix.
"""

from __future__ import annotations

import io
import shutil
import time
import uuid
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from musicsplit.gateway.storage.jobstore import SeparationJob

MEDIA_TYPES = {"wav": "audio/wav", "flac": "audio/flac"}


@dataclass(frozen=True)
class InputInfo:
    frames: int
    sample_rate: int
    channels: int


@dataclass(frozen=True)
class Download:
    """A result as the client gets it: a local file to stream, or a URL to redirect to."""

    media_type: str
    filename: str
    path: Path | None = None
    url: str | None = None


class ResultMissing(Exception):
    """A succeeded job's file is not where the store put it (deleted behind the gateway's back)."""


class StemWriter(Protocol):
    """Stems of one job written block by block, front to back (`write` runs in a worker thread)."""

    def write(self, name: str, block: np.ndarray) -> None: ...

    def commit(self) -> list[str]:
        """Make the written stems the job's result (each stem appears whole or not at all); the stem names."""

    def abort(self) -> None: ...


class ResultStore(Protocol):
    backend: str  # "local" | "s3"

    def staging_path(self) -> Path:
        """A fresh local path for an upload being validated (then `put_input`)."""

    async def put_input(self, job: SeparationJob, staged: Path) -> None: ...

    async def has_input(self, job: SeparationJob) -> bool: ...

    async def input_info(self, job: SeparationJob) -> InputInfo: ...

    async def read_input(self, job: SeparationJob, start: int, end: int) -> np.ndarray:
        """Frames [start, end) as float32 [channels, samples]."""

    async def delete_input(self, job: SeparationJob) -> None: ...

    async def put_chunk(self, job: SeparationJob, index: int, stems: dict[str, np.ndarray]) -> None:
        """Keep chunk `index`'s stems (a checkpoint; written whole or not at all)."""

    async def get_chunk(self, job: SeparationJob, index: int) -> dict[str, np.ndarray] | None: ...

    async def delete_chunks(self, job: SeparationJob) -> None: ...

    def stem_writer(self, job: SeparationJob, output_format: str, sample_rate: int) -> StemWriter: ...

    async def put_stems(self, job: SeparationJob, files: dict[str, Path]) -> None:
        """Local files (a cache entry's) become the job's stems; the files themselves are left alone."""

    async def copy_stems(self, source: SeparationJob, job: SeparationJob, stems: list[str],
                         output_format: str) -> None: ...

    def stem_files(self, job: SeparationJob, stems: list[str],
                   output_format: str) -> AbstractAsyncContextManager[dict[str, Path]]:
        """The stems as local files while the context lasts (for the result cache); read them, never write."""

    async def stem(self, job: SeparationJob, stem: str, output_format: str) -> Download: ...

    async def zip(self, job: SeparationJob, stems: list[str], output_format: str) -> Download: ...

    async def delete(self, job: SeparationJob, *, keep_results: bool = False) -> None:
        """The job's input and checkpoints, and unless keep_results its stems and zip."""

    async def sweep_staging(self, older_than_s: float) -> int: ...

    async def check(self) -> None:
        """Raise if the store cannot be used now (readiness)."""


class Staging:
    """Local scratch space for uploads being validated and files on their way to a shared store."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, suffix: str = ".wav") -> Path:
        return self.root / f"{uuid.uuid4().hex}{suffix}"

    def sweep(self, older_than_s: float) -> int:
        """Files and scratch dirs a crash left behind (mid-validation, mid-upload), idle that long."""
        count = 0
        for entry in self.root.iterdir():
            try:
                if entry.is_dir():
                    newest = max((f.stat().st_mtime for f in entry.iterdir()), default=entry.stat().st_mtime)
                    if time.time() - newest > older_than_s:
                        shutil.rmtree(entry, ignore_errors=True)
                        count += 1
                elif time.time() - entry.stat().st_mtime > older_than_s:
                    entry.unlink(missing_ok=True)
                    count += 1
            except FileNotFoundError:  # removed meanwhile by its owner
                pass
        return count


def write_chunk(stems: dict[str, np.ndarray], path: Path) -> None:
    """A checkpoint file: the float32 stems exactly (a resumed job's stems equal an uninterrupted
    run's). Streamed to the file, not built in memory first: a chunk's stems are megabytes, and
    every chunk in flight writes one."""
    with open(path, "wb") as f:
        np.savez(f, **{name: np.asarray(a, dtype=np.float32) for name, a in stems.items()})


def decode_chunk(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        return {name: z[name] for name in z.files}
