"""Golden sets: the reference tracks the probe separates, with known stems.

A SeparationModel's `spec.analysis.goldenSet` names the built-in set
(musicsplit.golden: four synthetic items and, unless `realMusic: false`, two
10 s excerpts of a CC0 song with its true stems, set `builtin-real` in the
probe's per-set results), a ConfigMap in its namespace, a storage URI, or
several of them (pooled). User sets have the MUSDB layout: per track a
mixture and one file per stem, wav or flac:

- ConfigMap: keys `TRACK.mixture.wav`, `TRACK.STEM.wav` (binaryData);
  ConfigMaps are capped at 1 MiB, a few seconds of audio;
- storage URI: one folder per track holding `mixture.wav` and `STEM.wav`
  (storage.py fetches it).

Everything is checked before a single request is sent (names, stems, sample
rates, lengths, the total), and a broken set raises `GoldenSetError` with a
reason for the hold and a message naming the track and what is wrong. Audio
is decoded one track at a time, when the probe sends it.
"""

from __future__ import annotations

import base64
import hashlib
import io
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .spec import GoldenSetSpec

# Hold reasons (conditions, lastAnalysis, status.probe errorReason)
INVALID = "GoldenSetInvalid"  # the set is there but unusable: the author must fix it
UNAVAILABLE = "GoldenSetUnavailable"  # it could not be read: missing, unreachable, no access
NOT_ALLOWED = "GoldenSetNotAllowed"  # the operator does not fetch from that URI

MIXTURE = "mixture"
STEMS = ("drums", "bass", "other", "vocals", "guitar", "piano")  # every stem a Demucs model names
AUDIO_SUFFIXES = (".wav", ".flac")
MIN_SAMPLE_RATE = 16000  # the predictor refuses less
CONFIGMAP_LIMIT = 1 << 20  # Kubernetes' cap on a ConfigMap
# The built-in set's identity: the generator (musicsplit.golden) with its defaults,
# and the real excerpts (v2: with them). Change it with the generator or the
# excerpts, so no result of the old set compares with the new.
BUILTIN_DIGEST = "builtin-v1"
BUILTIN_REAL_DIGEST = "builtin-v2"
BUILTIN, BUILTIN_REAL = "builtin", "builtin-real"  # Track.source: the synthetic items, the real excerpts


class GoldenSetError(Exception):
    """The golden set cannot be used; the message is for status (never file contents)."""

    def __init__(self, message: str, reason: str = INVALID):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Track:
    source: str  # "builtin", "configMap/NAME" or the storage URI: which set it is from
    name: str
    load: Callable[[], object]  # -> musicsplit.golden.GoldenItem, decoded now
    seconds: float


@dataclass(frozen=True)
class GoldenSet:
    ref: str  # GoldenSetSpec.ref: which sets
    digest: str  # what they held: two results compare only on equal digests
    tracks: tuple[Track, ...]


# ------------------------------------------------------------------ one set


def _reader(data: bytes | Path) -> Callable[[], bytes]:
    return (lambda: data) if isinstance(data, bytes) else data.read_bytes


def _info(track: str, part: str, data: bytes | Path) -> tuple[int, int, int]:
    """(sample rate, frames, channels) from the file's header."""
    import soundfile as sf

    try:
        info = sf.info(io.BytesIO(data) if isinstance(data, bytes) else str(data))
    except Exception:  # noqa: BLE001 - libsndfile says little more than "unrecognised format"
        raise GoldenSetError(f"track {track}: {part} is not a readable wav or flac file") from None
    return int(info.samplerate), int(info.frames), int(info.channels)


def _check_track(track: str, parts: Mapping[str, bytes | Path]) -> tuple[int, int]:
    """The track's (sample rate, frames); raises naming what is wrong."""
    if MIXTURE not in parts:
        raise GoldenSetError(f"track {track}: no mixture (expected {MIXTURE}.wav next to its stems)")
    stems = sorted(p for p in parts if p != MIXTURE)
    unknown = [p for p in stems if p not in STEMS]
    if unknown:
        raise GoldenSetError(f"track {track}: unknown stem {', '.join(unknown)} (stems are {', '.join(STEMS)})")
    if not stems:
        raise GoldenSetError(f"track {track}: a mixture without stems (add e.g. vocals.wav, drums.wav)")
    shapes = {p: _info(track, f"{p} file", data) for p, data in parts.items()}
    rate, frames, channels = shapes[MIXTURE]
    for part, (r, n, c) in shapes.items():
        if r != rate:
            raise GoldenSetError(f"track {track}: {part} is at {r} Hz, the mixture at {rate} Hz")
        if n != frames:
            raise GoldenSetError(f"track {track}: {part} has {n} samples, the mixture {frames}")
        if c not in (1, 2) or c != channels:
            raise GoldenSetError(f"track {track}: {part} has {c} channels, the mixture {channels} (1 or 2)")
    if rate < MIN_SAMPLE_RATE:
        raise GoldenSetError(f"track {track}: {rate} Hz is below the predictor's {MIN_SAMPLE_RATE} Hz")
    if frames == 0:
        raise GoldenSetError(f"track {track}: the mixture is empty")
    return rate, frames


def _stereo(samples: np.ndarray) -> np.ndarray:
    # The predictor duplicates a mono input to stereo; so is a mono reference.
    return np.repeat(samples, 2, axis=0) if samples.shape[0] == 1 else samples


def _loader(source: str, track: str, parts: Mapping[str, bytes | Path], rate: int):
    def load():
        from musicsplit.audio import decode
        from musicsplit.errors import BadAudio
        from musicsplit.golden import GoldenItem

        audio = {}
        for part, data in parts.items():
            try:
                audio[part] = _stereo(decode(_reader(data)()).samples)
            except BadAudio:
                raise GoldenSetError(f"track {track}: {part} could not be decoded") from None
        mixture = audio.pop(MIXTURE)
        return GoldenItem(f"{source}/{track}", mixture, audio, rate)
    return load


def _tracks(source: str, layout: Mapping[str, Mapping[str, bytes | Path]], empty: str) -> list[Track]:
    if not layout:
        raise GoldenSetError(empty)
    out = []
    for track in sorted(layout):
        rate, frames = _check_track(track, layout[track])
        out.append(Track(source, track, _loader(source, track, layout[track], rate), frames / rate))
    return out


def _part(filename: str) -> str | None:
    """'vocals.wav' -> 'vocals'; None for a file that is not audio."""
    stem, dot, suffix = filename.rpartition(".")
    return stem if dot and f".{suffix.lower()}" in AUDIO_SUFFIXES and stem else None


def configmap_tracks(name: str, binary_data: Mapping[str, str] | None, data: Mapping[str, str] | None) -> list[Track]:
    """Tracks from a ConfigMap's keys `TRACK.PART.wav` (binaryData as the API
    returns it: base64; `data` holds what kubectl found to be UTF-8)."""
    files: dict[str, bytes] = {}
    for key, value in (binary_data or {}).items():
        try:
            files[key] = base64.b64decode(value, validate=True)
        except ValueError:
            raise GoldenSetError(f"ConfigMap {name}: binaryData {key} is not base64") from None
    files.update({k: v.encode() for k, v in (data or {}).items()})
    layout: dict[str, dict[str, bytes]] = {}
    for key, blob in files.items():
        pieces = key.rsplit(".", 2)  # a track's name may hold dots: "take.2.vocals.wav"
        track = pieces[0] if len(pieces) == 3 else ""
        part = _part(".".join(pieces[1:])) if track else None
        if part is None:
            raise GoldenSetError(f"ConfigMap {name}: key {key} is not TRACK.mixture.wav or TRACK.STEM.wav")
        layout.setdefault(track, {})[part] = blob
    return _tracks(f"configMap/{name}", layout, f"ConfigMap {name} holds no track (expected binaryData keys "
                                                 "TRACK.mixture.wav and TRACK.STEM.wav)")


def directory_tracks(source: str, root: Path) -> list[Track]:
    """Tracks from a fetched storage URI: every folder holding a mixture is a track."""
    layout: dict[str, dict[str, Path]] = {}
    for path in sorted(root.rglob("*")):
        part = _part(path.name) if path.is_file() else None
        if part is None:
            continue  # READMEs, licences, folders
        track = path.parent.relative_to(root).as_posix()
        if track == ".":
            raise GoldenSetError(f"{source}: {path.name} is at the top; put each track in its own folder")
        layout.setdefault(track, {})[part] = path
    for track, parts in layout.items():
        if MIXTURE not in parts:  # a folder of other audio next to the tracks
            raise GoldenSetError(f"track {track}: no {MIXTURE}.wav (each track folder needs one, with its stems)")
    return _tracks(source, layout, f"{source} holds no track (expected a folder per track with mixture.wav and "
                                   "STEM.wav files)")


BUILTIN_ITEMS, BUILTIN_SECONDS = 4, 6.0  # musicsplit.golden.golden_set()'s defaults


def builtin_tracks(real: bool = True) -> list[Track]:
    """The synthetic items, then (`real`) the real CC0 excerpts (musicsplit.golden.REAL_EXCERPTS)."""
    from musicsplit.golden import REAL_AUDIO, REAL_EXCERPTS, golden_item, real_item

    # Generated or decoded as sent, like a user's tracks: one in memory at a time.
    tracks = [Track(BUILTIN, f"golden-0-{i:02d}", (lambda i=i: golden_item(i, BUILTIN_SECONDS)), BUILTIN_SECONDS)
              for i in range(BUILTIN_ITEMS)]
    if real:
        for e in REAL_EXCERPTS:
            rate, frames, _ = _info(f"real-{e}", "mixture", REAL_AUDIO / e / "vocals.flac")
            tracks.append(Track(BUILTIN_REAL, f"real-{e}", (lambda e=e: real_item(e)), frames / rate))
    return tracks


def digest_of(files: Iterable[tuple[str, bytes]]) -> str:
    """sha256 over (name, sha256(content)) pairs in name order."""
    h = hashlib.sha256()
    for name, blob in sorted(files):
        h.update(name.encode() + b"\0" + hashlib.sha256(blob).hexdigest().encode() + b"\n")
    return h.hexdigest()


# ------------------------------------------------------------------ the spec's sets


# (namespace, name) -> the ConfigMap's (binaryData, data); raises GoldenSetError
ConfigMapReader = Callable[[str, str], tuple[dict | None, dict | None]]
# storage URI -> (local dir, content digest); raises GoldenSetError
StorageFetcher = Callable[[str], tuple[Path, str]]


def builtin() -> GoldenSet:
    return load(GoldenSetSpec(), "")


def load(spec: GoldenSetSpec, namespace: str, *, read_configmap: ConfigMapReader | None = None,
         fetch: StorageFetcher | None = None, max_seconds: float | None = None) -> GoldenSet:
    """The tracks `spec` names, checked; audio is decoded later, per track."""
    tracks: list[Track] = []
    digests = []
    if spec.uses_builtin:
        tracks += builtin_tracks(spec.real_music)
        digests.append(("builtin", (BUILTIN_REAL_DIGEST if spec.real_music else BUILTIN_DIGEST).encode()))
    if spec.config_map:
        if read_configmap is None:
            raise GoldenSetError("this operator cannot read ConfigMaps", UNAVAILABLE)
        binary, data = read_configmap(namespace, spec.config_map)
        tracks += configmap_tracks(spec.config_map, binary, data)
        blobs = [(k, base64.b64decode(v)) for k, v in (binary or {}).items()] + [
            (k, v.encode()) for k, v in (data or {}).items()]
        digests.append((f"configMap/{spec.config_map}", digest_of(blobs).encode()))
    if spec.storage_uri:
        if fetch is None:
            raise GoldenSetError("this operator cannot fetch golden sets from storage", UNAVAILABLE)
        root, digest = fetch(spec.storage_uri)
        tracks += directory_tracks(spec.storage_uri, root)
        digests.append((spec.storage_uri, digest.encode()))
    if not tracks:
        raise GoldenSetError("goldenSet names no set (builtin: false and no configMap or storageUri)")
    total = sum(t.seconds for t in tracks)
    if max_seconds is not None and total > max_seconds:
        raise GoldenSetError(f"the golden set holds {total:.0f} s of audio, over the operator's limit of "
                             f"{max_seconds:.0f} s (MUSICSPLIT_OPERATOR_GOLDEN_SET_MAX_SECONDS): use fewer or "
                             "shorter tracks")
    return GoldenSet(spec.ref, digest_of(digests)[:16], tuple(tracks))
