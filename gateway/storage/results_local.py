"""The result store on the local disk (the embedded default): data_dir/jobs/<id>/.

  input.wav, chunks/<index>.npz, stems/<stem>.<ext>, stems.zip; staging under data_dir/staging.

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
import uuid
import weakref
import zipfile
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator, Callable

import numpy as np
import soundfile as sf

from musicsplit.audio import ENCODINGS
from musicsplit.gateway.storage.jobstore import SeparationJob
from musicsplit.gateway.storage.results import (MEDIA_TYPES, Download, InputInfo, ResultMissing, Staging, decode_chunk,
                                        write_chunk)


class LocalStemWriter:
    """Stems streamed into temp files in `out_dir`, renamed to their names at commit."""

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

    def close(self) -> dict[str, Path]:
        """Close the temp files; stem name -> temp file."""
        for f, _ in self._files.values():
            f.close()
        return {name: tmp for name, (_, tmp) in self._files.items()}

    def commit(self) -> list[str]:
        for name, tmp in self.close().items():
            os.replace(tmp, self.out_dir / f"{name}.{self.ext}")
        return sorted(self._files)

    def abort(self) -> None:
        for tmp in self.close().values():
            tmp.unlink(missing_ok=True)


class LocalResultStore:
    backend = "local"

    def __init__(self, data_dir: Path, staging_dir: Path):
        self.jobs_dir = Path(data_dir) / "jobs"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.staging = Staging(staging_dir)
        self._zip_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    def job_dir(self, job_id: str) -> Path:
        return self.jobs_dir / job_id

    def _input(self, job: SeparationJob) -> Path:
        return self.job_dir(job.id) / "input.wav"

    def _stem_path(self, job_id: str, stem: str, output_format: str) -> Path:
        return self.job_dir(job_id) / "stems" / f"{stem}.{output_format}"

    def _chunk(self, job: SeparationJob, index: int) -> Path:
        return self.job_dir(job.id) / "chunks" / f"{index:05d}.npz"

    # -- inputs --------------------------------------------------------------------

    def staging_path(self) -> Path:
        return self.staging.path()

    async def put_input(self, job: SeparationJob, staged: Path) -> None:
        self.job_dir(job.id).mkdir(parents=True, exist_ok=True)
        os.replace(staged, self._input(job))

    async def has_input(self, job: SeparationJob) -> bool:
        return self._input(job).exists()

    async def input_info(self, job: SeparationJob) -> InputInfo:
        info = await asyncio.to_thread(sf.info, str(self._input(job)))
        return InputInfo(int(info.frames), int(info.samplerate), int(info.channels))

    async def read_input(self, job: SeparationJob, start: int, end: int) -> np.ndarray:
        return await asyncio.to_thread(_read_frames, self._input(job), start, end)

    async def delete_input(self, job: SeparationJob) -> None:
        self._input(job).unlink(missing_ok=True)

    # -- checkpoints -----------------------------------------------------------------

    async def put_chunk(self, job: SeparationJob, index: int, stems: dict[str, np.ndarray]) -> None:
        await asyncio.to_thread(_write_atomic, self._chunk(job, index), lambda tmp: write_chunk(stems, tmp))

    async def get_chunk(self, job: SeparationJob, index: int) -> dict[str, np.ndarray] | None:
        try:
            data = await asyncio.to_thread(self._chunk(job, index).read_bytes)
        except FileNotFoundError:
            return None
        return decode_chunk(data)

    async def delete_chunks(self, job: SeparationJob) -> None:
        await asyncio.to_thread(shutil.rmtree, self.job_dir(job.id) / "chunks", True)

    # -- stems ---------------------------------------------------------------------

    def stem_writer(self, job: SeparationJob, output_format: str, sample_rate: int) -> LocalStemWriter:
        return LocalStemWriter(self.job_dir(job.id) / "stems", output_format, sample_rate)

    async def put_stems(self, job: SeparationJob, files: dict[str, Path]) -> None:
        await asyncio.to_thread(self._place, {p.name: p for p in files.values()}, self.job_dir(job.id) / "stems")

    async def copy_stems(self, source: SeparationJob, job: SeparationJob, stems: list[str],
                         output_format: str) -> None:
        files = {f"{s}.{output_format}": self._stem_path(source.id, s, output_format) for s in stems}
        await asyncio.to_thread(self._place, files, self.job_dir(job.id) / "stems")

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

    @asynccontextmanager
    async def stem_files(self, job: SeparationJob, stems: list[str],
                         output_format: str) -> AsyncIterator[dict[str, Path]]:
        yield {s: self._stem_path(job.id, s, output_format) for s in stems}

    async def stem(self, job: SeparationJob, stem: str, output_format: str) -> Download:
        path = self._stem_path(job.id, stem, output_format)
        if not path.is_file():
            raise ResultMissing(f"{path} is missing")
        return Download(MEDIA_TYPES.get(output_format, "application/octet-stream"), f"{stem}.{output_format}", path)

    async def zip(self, job: SeparationJob, stems: list[str], output_format: str) -> Download:
        """The stems as one zip (stored, not deflated: audio does not compress), built once."""
        async with self._zip_locks.setdefault(job.id, asyncio.Lock()):  # concurrent first downloads: built once
            path = self.job_dir(job.id) / "stems.zip"
            if not path.exists():
                files = {s: self._stem_path(job.id, s, output_format) for s in stems}
                await asyncio.to_thread(build_zip, files, path)
        return Download("application/zip", f"{job.id}-stems.zip", path)

    # -- deletion ------------------------------------------------------------------

    async def delete(self, job: SeparationJob, *, keep_results: bool = False) -> None:
        if keep_results:
            await self.delete_input(job)
            await self.delete_chunks(job)
        else:
            await asyncio.to_thread(shutil.rmtree, self.job_dir(job.id), True)

    async def sweep_staging(self, older_than_s: float) -> int:
        return await asyncio.to_thread(self.staging.sweep, older_than_s)

    async def check(self) -> None:
        """The data dir can be written (a full or read-only volume takes no upload)."""
        await asyncio.to_thread(_probe_writable, self.staging.root)


def build_zip(files: dict[str, Path], path: Path) -> None:
    """Stems into one zip at `path`, through a temp file of its own (another builder may race)."""
    fd, tmp = tempfile.mkstemp(prefix=".stems.", suffix=".zip", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out, zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as z:
            for src in files.values():
                if not src.is_file():
                    raise ResultMissing(f"{src} is missing")
                z.write(src, arcname=src.name)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """`write` a temp file beside `path`, then rename it over: readers see the whole file or none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{uuid.uuid4().hex}.{path.name}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _probe_writable(root: Path) -> None:
    with tempfile.NamedTemporaryFile(dir=root, prefix=".ready."):
        pass


def _read_frames(path: Path, start: int, end: int) -> np.ndarray:
    data, _ = sf.read(str(path), start=start, stop=end, dtype="float32", always_2d=True)
    return np.ascontiguousarray(data.T)
