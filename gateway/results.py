"""Where a job's input and stems live: the result store.

The interface is what the gateway needs: keep a validated input, read any
range of it (a chunk), write stems block by block, hand out a download, a
zip, delete, sweep. `LocalResultStore` (the embedded default) keeps them
under data_dir/jobs/<id>/; a shared store (S3) fits the same interface, with
downloads as redirects to presigned URLs (`Download.url`).

Stem files may be hard links shared with the result cache and with other
jobs (a cache hit, a deduplicated job), so nothing here ever opens an
existing stem file for writing: new content goes to a fresh temp file that
is renamed over the name, which leaves the other links' file as it was.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
import uuid
import weakref
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import soundfile as sf

from musicsplit.audio import ENCODINGS


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


class StemWriter(Protocol):
    """Stems of one job written block by block, front to back (`write` runs in a worker thread)."""

    def write(self, name: str, block: np.ndarray) -> None: ...

    def commit(self) -> list[str]:
        """Make the written stems the job's result; the stem names."""

    def abort(self) -> None: ...


class ResultStore(Protocol):
    def staging_path(self) -> Path:
        """A fresh local path for an upload being validated (then `put_input`)."""

    async def put_input(self, job_id: str, staged: Path) -> None: ...

    async def has_input(self, job_id: str) -> bool: ...

    async def input_info(self, job_id: str) -> InputInfo: ...

    async def read_input(self, job_id: str, start: int, end: int) -> np.ndarray:
        """Frames [start, end) as float32 [channels, samples]."""

    async def delete_input(self, job_id: str) -> None: ...

    def stem_writer(self, job_id: str, output_format: str, sample_rate: int) -> StemWriter: ...

    async def put_stems(self, job_id: str, files: dict[str, Path]) -> None:
        """Local files (a cache entry's) become the job's stems; the files themselves are left alone."""

    async def copy_stems(self, source_job_id: str, job_id: str, stems: list[str], output_format: str) -> None: ...

    async def stem_files(self, job_id: str, stems: list[str], output_format: str) -> dict[str, Path]:
        """The stems as local files (for the result cache); read them, never write them."""

    async def stem(self, job_id: str, stem: str, output_format: str) -> Download: ...

    async def zip(self, job_id: str, stems: list[str], output_format: str) -> Download: ...

    async def delete(self, job_id: str, *, keep_results: bool = False) -> None:
        """The job's input, and unless keep_results its stems and zip."""

    async def sweep_staging(self, older_than_s: float) -> int: ...


class ResultMissing(Exception):
    """A succeeded job's file is not where the store put it (deleted behind the gateway's back)."""


MEDIA_TYPES = {"wav": "audio/wav", "flac": "audio/flac"}


class LocalStemWriter:
    def __init__(self, out_dir: Path, output_format: str, sample_rate: int):
        self.out_dir = out_dir
        self.ext = output_format
        self.format, self.subtype = ENCODINGS[output_format]
        self.rate = sample_rate
        self._files: dict[str, tuple[sf.SoundFile, Path]] = {}

    def write(self, name: str, block: np.ndarray) -> None:
        if name not in self._files:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            tmp = self.out_dir / f".{name}.{uuid.uuid4().hex}.{self.ext}"
            self._files[name] = (sf.SoundFile(str(tmp), "w", samplerate=self.rate, channels=block.shape[0],
                                              format=self.format, subtype=self.subtype), tmp)
        # Streamed block by block, so not musicsplit.audio.encode (whole files); same clip rule.
        data = block.T
        if self.subtype.startswith("PCM"):
            data = np.clip(data, -1.0, 1.0)
        self._files[name][0].write(data)

    def commit(self) -> list[str]:
        for name, (f, tmp) in self._files.items():
            f.close()
            os.replace(tmp, self.out_dir / f"{name}.{self.ext}")
        return sorted(self._files)

    def abort(self) -> None:
        for f, tmp in self._files.values():
            f.close()
            tmp.unlink(missing_ok=True)


class LocalResultStore:
    """data_dir/jobs/<id>/{input.wav, stems/<stem>.<ext>, stems.zip}; staging under data_dir/staging."""

    def __init__(self, data_dir: Path):
        self.jobs_dir = Path(data_dir) / "jobs"
        self.staging_dir = Path(data_dir) / "staging"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.staging_dir.mkdir(parents=True, exist_ok=True)
        self._zip_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    def job_dir(self, job_id: str) -> Path:
        return self.jobs_dir / job_id

    def _input(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "input.wav"

    def _stem_path(self, job_id: str, stem: str, output_format: str) -> Path:
        return self.job_dir(job_id) / "stems" / f"{stem}.{output_format}"

    # -- inputs --------------------------------------------------------------------

    def staging_path(self) -> Path:
        return self.staging_dir / f"{uuid.uuid4().hex}.wav"

    async def put_input(self, job_id: str, staged: Path) -> None:
        self.job_dir(job_id).mkdir(parents=True, exist_ok=True)
        os.replace(staged, self._input(job_id))

    async def has_input(self, job_id: str) -> bool:
        return self._input(job_id).exists()

    async def input_info(self, job_id: str) -> InputInfo:
        info = await asyncio.to_thread(sf.info, str(self._input(job_id)))
        return InputInfo(int(info.frames), int(info.samplerate), int(info.channels))

    async def read_input(self, job_id: str, start: int, end: int) -> np.ndarray:
        return await asyncio.to_thread(_read_frames, self._input(job_id), start, end)

    async def delete_input(self, job_id: str) -> None:
        self._input(job_id).unlink(missing_ok=True)

    # -- stems ---------------------------------------------------------------------

    def stem_writer(self, job_id: str, output_format: str, sample_rate: int) -> LocalStemWriter:
        return LocalStemWriter(self.job_dir(job_id) / "stems", output_format, sample_rate)

    async def put_stems(self, job_id: str, files: dict[str, Path]) -> None:
        await asyncio.to_thread(self._place, {p.name: p for p in files.values()}, self.job_dir(job_id) / "stems")

    async def copy_stems(self, source_job_id: str, job_id: str, stems: list[str], output_format: str) -> None:
        files = {f"{s}.{output_format}": self._stem_path(source_job_id, s, output_format) for s in stems}
        await asyncio.to_thread(self._place, files, self.job_dir(job_id) / "stems")

    @staticmethod
    def _place(files: dict[str, Path], dest: Path) -> None:
        """Link (else copy) each file to dest/name through a fresh temp name, then rename over."""
        dest.mkdir(parents=True, exist_ok=True)
        for name, src in files.items():
            tmp = dest / f".{uuid.uuid4().hex}.{name}"
            try:
                os.link(src, tmp)
            except OSError:
                shutil.copyfile(src, tmp)
            os.replace(tmp, dest / name)

    async def stem_files(self, job_id: str, stems: list[str], output_format: str) -> dict[str, Path]:
        return {s: self._stem_path(job_id, s, output_format) for s in stems}

    async def stem(self, job_id: str, stem: str, output_format: str) -> Download:
        path = self._stem_path(job_id, stem, output_format)
        if not path.is_file():
            raise ResultMissing(f"{path} is missing")
        return Download(MEDIA_TYPES.get(output_format, "application/octet-stream"), f"{stem}.{output_format}", path)

    async def zip(self, job_id: str, stems: list[str], output_format: str) -> Download:
        """The stems as one zip (stored, not deflated: audio does not compress), built once."""
        async with self._zip_locks.setdefault(job_id, asyncio.Lock()):  # concurrent first downloads: built once
            path = self.job_dir(job_id) / "stems.zip"
            if not path.exists():
                await asyncio.to_thread(self._build_zip, job_id, stems, output_format, path)
        return Download("application/zip", f"{job_id}-stems.zip", path)

    def _build_zip(self, job_id: str, stems: list[str], output_format: str, path: Path) -> None:
        # A temp file of its own: another replica on the same volume may be building it too.
        fd, tmp = tempfile.mkstemp(prefix=".stems.", suffix=".zip", dir=self.job_dir(job_id))
        try:
            with os.fdopen(fd, "wb") as out, zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as z:
                for name in stems:
                    src = self._stem_path(job_id, name, output_format)
                    if not src.is_file():
                        raise ResultMissing(f"{src} is missing")
                    z.write(src, arcname=src.name)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    # -- deletion ------------------------------------------------------------------

    async def delete(self, job_id: str, *, keep_results: bool = False) -> None:
        if keep_results:
            await self.delete_input(job_id)
        else:
            await asyncio.to_thread(shutil.rmtree, self.job_dir(job_id), True)

    async def sweep_staging(self, older_than_s: float) -> int:
        """Uploads left in staging by a crash mid-validation."""
        count = 0
        for f in self.staging_dir.glob("*.wav"):
            if time.time() - f.stat().st_mtime > older_than_s:
                f.unlink(missing_ok=True)
                count += 1
        return count


def _read_frames(path: Path, start: int, end: int) -> np.ndarray:
    data, _ = sf.read(str(path), start=start, stop=end, dtype="float32", always_2d=True)
    return np.ascontiguousarray(data.T)


def make_result_store(settings) -> LocalResultStore:
    return LocalResultStore(Path(settings.data_dir))
