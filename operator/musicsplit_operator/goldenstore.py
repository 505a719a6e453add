"""Golden sets from storage URIs, in a bounded local cache.

The operator fetches with KServe's own storage code (kserve-storage, what the
predictor and KServe's storage initializer use: s3, gs, https archives, hf,
azure, file/PVC mounts), in a child process it can stop: a download is
bounded in bytes (`max_set_bytes`, checked while it runs, archives unpacked
included) and in time (`timeout_s`); past either the child is killed and the
set is refused with a reason. Only URIs under the operator's allowlist are
fetched (a SeparationModel author must not make the operator read whatever
its credentials reach).

Entries are keyed by URI and content digest and kept for `ttl_s` (then
fetched again, so an edited set is seen); the whole cache stays under
`max_cache_bytes`, least recently fetched first out, never an entry a probe
is reading.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from . import egress
from .goldenset import INVALID, NOT_ALLOWED, UNAVAILABLE, GoldenSetError

log = logging.getLogger(__name__)

# The child: KServe's storage code, nothing of ours.
_DOWNLOAD = "import sys; from kserve_storage import Storage; Storage.download(sys.argv[1], sys.argv[2])"
_POLL_S = 0.1


def allowed(uri: str, allowlist: list[str]) -> bool:
    """Under one of the allowlisted prefixes (egress.py's rule; no `..` segments:
    kserve-storage hands file:// paths to the filesystem as they are)."""
    return egress.listed(uri, allowlist)


def _files(root: Path):
    """Every file under root, following links (file:// sources arrive as symlinks)."""
    for dirpath, _, names in os.walk(root, followlinks=True):
        for name in names:
            yield Path(dirpath) / name


def tree_bytes(root: Path) -> int:
    total = 0
    for path in _files(root):
        try:
            total += path.stat().st_size
        except OSError:  # a file the download is replacing right now
            pass
    return total


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(_files(root)):
        file_hash = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                file_hash.update(block)
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + file_hash.hexdigest().encode() + b"\n")
    return h.hexdigest()


def _last_error(stderr: str) -> str:
    """The exception line of the child's traceback, short; never the whole log."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    line = next((ln for ln in reversed(lines) if ":" in ln and not ln.startswith(("File ", "^"))),
                lines[-1] if lines else "no error output")
    return " ".join(line.split())[:240]


class GoldenStore:
    """See the module docstring. Thread-safe: one fetch per URI at a time."""

    def __init__(self, cache_dir: Path | str, *, allowlist: list[str], max_set_bytes: int, max_cache_bytes: int,
                 timeout_s: float, ttl_s: float):
        self.root = Path(cache_dir)
        self.allowlist, self.max_set_bytes, self.max_cache_bytes = list(allowlist), max_set_bytes, max_cache_bytes
        self.timeout_s, self.ttl_s = timeout_s, ttl_s
        self._entries, self._partial = self.root / "entries", self.root / "partial"
        self._lock = threading.Lock()
        self._uri_locks: dict[str, threading.Lock] = {}
        self._pins: dict[Path, int] = {}
        self._entries.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self._partial, ignore_errors=True)  # left by a process that died mid-download
        self._partial.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def pinned(self):
        """A `fetch(uri) -> (dir, digest)` whose entries stay until the block ends."""
        held: list[Path] = []

        try:
            yield lambda uri: self._fetch(uri, held)
        finally:
            with self._lock:
                for path in held:
                    self._pins[path] -= 1
                    if not self._pins[path]:
                        del self._pins[path]

    # -- internals

    @staticmethod
    def _key(uri: str) -> str:
        return hashlib.sha256(uri.encode()).hexdigest()[:16]

    def _fetch(self, uri: str, held: list[Path]) -> tuple[Path, str]:
        if not allowed(uri, self.allowlist):
            raise GoldenSetError(
                f"goldenSet.storageUri {uri} is not under the operator's allowlist "
                "(MUSICSPLIT_OPERATOR_GOLDEN_STORAGE_ALLOWLIST): nothing is fetched from it; use a ConfigMap, or "
                "ask the operator's admin to allow its prefix", NOT_ALLOWED)
        key = self._key(uri)
        with self._lock:
            uri_lock = self._uri_locks.setdefault(key, threading.Lock())
        with uri_lock:
            with self._lock:
                entry = self._fresh(key)
                if entry is not None:
                    self._pin(entry)
            if entry is None:
                entry = self._download(uri, key)  # pinned as it lands
            held.append(entry)
        self._evict()
        return entry / "set", entry.name.split("-", 1)[1]

    def _pin(self, entry: Path) -> None:
        self._pins[entry] = self._pins.get(entry, 0) + 1

    def _fresh(self, key: str) -> Path | None:
        for entry in self._entries.glob(f"{key}-*"):
            if time.time() - entry.stat().st_mtime < self.ttl_s:
                return entry
        return None

    def _download(self, uri: str, key: str) -> Path:
        work = Path(tempfile.mkdtemp(dir=self._partial))
        try:
            target = work / "set"
            target.mkdir()
            self._run_child(uri, target, work / "stderr")
            size = tree_bytes(target)
            if size > self.max_set_bytes:
                raise self._too_big(uri)
            digest = tree_digest(target)
            entry = self._entries / f"{key}-{digest[:16]}"
            with self._lock:
                if entry.exists():
                    os.utime(entry)  # the same content again: fresh for another ttl
                else:
                    entry.mkdir()
                    target.rename(entry / "set")
                self._pin(entry)
                # Older content of the same URI is of no use any more (unless a probe reads it).
                for old in self._entries.glob(f"{key}-*"):
                    if old != entry and old not in self._pins:
                        shutil.rmtree(old, ignore_errors=True)
            log.info("golden set %s fetched: %d bytes, digest %s", uri, size, digest[:16])
            return entry
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _too_big(self, uri: str) -> GoldenSetError:
        return GoldenSetError(f"goldenSet.storageUri {uri} holds over {self.max_set_bytes} bytes, the operator's "
                              "limit (MUSICSPLIT_OPERATOR_GOLDEN_SET_MAX_BYTES): use fewer or shorter tracks", INVALID)

    def _run_child(self, uri: str, target: Path, stderr_path: Path) -> None:
        deadline = time.monotonic() + self.timeout_s
        with open(stderr_path, "wb") as err:
            proc = subprocess.Popen([sys.executable, "-c", _DOWNLOAD, uri, str(target)], stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
            try:
                while True:
                    try:
                        proc.wait(_POLL_S)
                        break
                    except subprocess.TimeoutExpired:
                        pass
                    if tree_bytes(target) > self.max_set_bytes:
                        raise self._too_big(uri)
                    if time.monotonic() > deadline:
                        raise GoldenSetError(f"goldenSet.storageUri {uri} was not fetched within {self.timeout_s:g} s "
                                             "(MUSICSPLIT_OPERATOR_GOLDEN_FETCH_TIMEOUT_SECONDS)", UNAVAILABLE)
            finally:
                if proc.poll() is None:
                    os.killpg(proc.pid, 9)  # the child and the download workers it started
                    proc.wait()
        if proc.returncode != 0:
            tail = stderr_path.read_bytes()[-4096:].decode(errors="replace")
            log.warning("fetching golden set %s failed:\n%s", uri, tail)
            raise GoldenSetError(f"goldenSet.storageUri {uri} could not be fetched: {_last_error(tail)}", UNAVAILABLE)

    def _evict(self) -> None:
        with self._lock:
            entries = sorted(self._entries.iterdir(), key=lambda p: p.stat().st_mtime)
            sizes = {e: tree_bytes(e) for e in entries}
            total = sum(sizes.values())
            for entry in entries:
                if total <= self.max_cache_bytes:
                    break
                if entry in self._pins:
                    continue
                shutil.rmtree(entry, ignore_errors=True)
                total -= sizes[entry]
