"""Result cache: the same audio, model, version and parameters are separated once.

Key: sha256 of the uploaded bytes + model + model version + parameters.
Backends: `disk` (embedded default; one directory per entry, evicts the
least recently used entries beyond a byte budget) and `redis` (shared by
gateway replicas; entries expire after a TTL and Redis' own maxmemory
policy bounds the total). A backend that fails (Redis down) counts an
error and answers "miss": the gateway serves uncached, never fails for it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from musicsplit.gateway import metrics

log = logging.getLogger(__name__)


def cache_key(audio_sha: str, model: str, version: str, params: dict, tenant: str) -> str:
    """Per tenant: a hit answers in milliseconds and says `cached`, which would tell one tenant that
    another separated the same audio (ADR 0206)."""
    blob = json.dumps({"audio": audio_sha, "model": model, "version": version, "params": params, "tenant": tenant},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class CachedResult:
    meta: dict  # the job's result document (stems, sample_rate, quality, version...)
    files: dict[str, Path]  # stem name -> local file, in the directory `get` was given


class NoCache:
    backend = "none"

    async def get(self, key: str, dest: Path) -> CachedResult | None:
        return None

    async def put(self, key: str, meta: dict, files: dict[str, Path]) -> None:
        return None

    async def close(self) -> None:
        return None


class DiskCache:
    """Entries under root/<key>/ (meta.json + stem files), LRU-evicted by total size."""

    backend = "disk"

    def __init__(self, root: Path, max_bytes: int):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self._lock = asyncio.Lock()

    async def get(self, key: str, dest: Path) -> CachedResult | None:
        start = time.perf_counter()
        entry = self.root / key
        meta_path = entry / "meta.json"
        try:
            meta = json.loads(meta_path.read_text())
            dest.mkdir(parents=True, exist_ok=True)
            files = {}
            for stem, name in meta["files"].items():
                target = dest / name
                if target.exists():
                    target.unlink()
                try:
                    os.link(entry / name, target)  # same filesystem: instant, no copy
                except OSError:
                    shutil.copyfile(entry / name, target)
                files[stem] = target
            os.utime(meta_path)  # recency for LRU eviction
        except (OSError, KeyError, ValueError):
            self._observe("miss", start)
            return None
        self._observe("hit", start)
        return CachedResult(meta["result"], files)

    async def put(self, key: str, meta: dict, files: dict[str, Path]) -> None:
        entry = self.root / key
        if entry.exists():
            return
        tmp = self.root / f".tmp-{uuid.uuid4().hex}"
        try:
            tmp.mkdir()
            names = {}
            for stem, path in files.items():
                try:
                    os.link(path, tmp / path.name)
                except OSError:
                    shutil.copyfile(path, tmp / path.name)
                names[stem] = path.name
            (tmp / "meta.json").write_text(json.dumps({"result": meta, "files": names}))
            os.replace(tmp, entry)
        except OSError as exc:
            log.warning("disk cache: could not store %s: %s", key, exc)
            shutil.rmtree(tmp, ignore_errors=True)
            return
        async with self._lock:
            await asyncio.to_thread(self.evict)

    def size(self) -> int:
        return sum(f.stat().st_size for f in self.root.glob("*/*") if f.is_file())

    def evict(self) -> list[str]:
        """Delete least recently used entries until the total fits the budget."""
        entries = []
        for d in self.root.iterdir():
            if d.name.startswith(".") or not (d / "meta.json").exists():
                continue
            size = sum(f.stat().st_size for f in d.iterdir() if f.is_file())
            entries.append(((d / "meta.json").stat().st_mtime, size, d))
        total = sum(e[1] for e in entries)
        removed = []
        for _, size, d in sorted(entries):
            if total <= self.max_bytes:
                break
            shutil.rmtree(d, ignore_errors=True)
            total -= size
            removed.append(d.name)
        return removed

    def _observe(self, result: str, start: float) -> None:
        metrics.CACHE.labels(backend=self.backend, result=result).inc()
        metrics.CACHE_SECONDS.labels(backend=self.backend, result=result).observe(time.perf_counter() - start)

    async def close(self) -> None:
        return None


class RedisCache:
    """One Redis hash per entry: `meta` + one field per stem file, with a TTL."""

    backend = "redis"

    def __init__(self, url: str, ttl_s: float, max_entry_bytes: int = 256 * 1024 * 1024, prefix: str = "musicsplit:cache:"):
        import redis.asyncio as redis

        self.client = redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=5.0)
        self.ttl = int(ttl_s)
        self.max_entry_bytes = max_entry_bytes
        self.prefix = prefix

    async def get(self, key: str, dest: Path) -> CachedResult | None:
        from redis.exceptions import RedisError

        start = time.perf_counter()
        try:
            data = await self.client.hgetall(self.prefix + key)
        except (RedisError, OSError) as exc:
            log.warning("redis cache unavailable (%s): serving uncached", exc)
            self._observe("error", start)
            return None
        if not data:
            self._observe("miss", start)
            return None
        try:
            meta = json.loads(data[b"meta"])
            blobs = {stem: (dest / name, data[f"file:{stem}".encode()]) for stem, name in meta["files"].items()}
            result = meta["result"]
        except (KeyError, ValueError, TypeError, AttributeError) as exc:  # a partial or foreign entry: a miss
            log.warning("redis cache: unreadable entry %s (%s): serving uncached", key, exc)
            self._observe("miss", start)
            return None
        try:
            await asyncio.to_thread(_write_files, dest, blobs)
        except OSError as exc:
            log.warning("redis cache: could not write %s: %s", dest, exc)
            self._observe("error", start)
            return None
        self._observe("hit", start)
        return CachedResult(result, {stem: path for stem, (path, _) in blobs.items()})

    async def put(self, key: str, meta: dict, files: dict[str, Path]) -> None:
        from redis.exceptions import RedisError

        try:
            mapping = await asyncio.to_thread(self._mapping, meta, files)
        except OSError as exc:
            log.warning("redis cache: could not read the result files (%s): result not cached", exc)
            return
        if mapping is None:
            return
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.hset(self.prefix + key, mapping=mapping)
                pipe.expire(self.prefix + key, self.ttl)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning("redis cache unavailable (%s): result not cached", exc)
            metrics.CACHE.labels(backend=self.backend, result="error").inc()

    async def check(self) -> None:
        """Raise if Redis does not answer (readiness reports the cache degraded)."""
        await self.client.ping()

    def _mapping(self, meta: dict, files: dict[str, Path]) -> dict[str, bytes] | None:
        """The hash fields of an entry (file reads: run in a thread), None when over the size cap."""
        if sum(p.stat().st_size for p in files.values()) > self.max_entry_bytes:
            return None
        mapping = {"meta": json.dumps({"result": meta, "files": {s: p.name for s, p in files.items()}}).encode()}
        for stem, path in files.items():
            mapping[f"file:{stem}"] = path.read_bytes()
        return mapping

    def _observe(self, result: str, start: float) -> None:
        metrics.CACHE.labels(backend=self.backend, result=result).inc()
        metrics.CACHE_SECONDS.labels(backend=self.backend, result=result).observe(time.perf_counter() - start)

    async def close(self) -> None:
        try:
            await self.client.aclose()
        except Exception:  # pragma: no cover
            pass


def _write_files(dest: Path, blobs: dict[str, tuple[Path, bytes]]) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for path, content in blobs.values():
        path.write_bytes(content)


def make_cache(settings) -> NoCache | DiskCache | RedisCache:
    if settings.cache_backend == "disk":
        return DiskCache(Path(settings.data_dir) / "cache", settings.cache_max_bytes)
    if settings.cache_backend == "redis":
        return RedisCache(settings.redis_url.get_secret_value(), settings.cache_ttl_s)
    if settings.cache_backend == "none":
        return NoCache()
    raise ValueError(f"cache_backend must be disk, redis or none, not {settings.cache_backend!r}")
