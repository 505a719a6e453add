"""The audio a load test uploads: real PCM wav files, and the manifest k6 reads.

The k6 script makes every upload unique by overwriting the last two frames
(8 bytes) of the file, so a file must be a PCM wav whose `data` chunk runs
to the end of the file; `write_tracks` writes them that way and checks it.
Rendered tracks are golden-set music (drums, bass, chords, a voice), so the
separator does the work it does on songs, not on silence.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import soundfile as sf

SAMPLE_RATE = 44100


def data_chunk_is_last(path: Path) -> bool:
    """True when the RIFF file's `data` chunk ends exactly at the end of the file."""
    raw = path.read_bytes()
    if raw[:4] != b"RIFF" or raw[8:12] != b"WAVE":
        return False
    offset = 12
    while offset + 8 <= len(raw):
        chunk_id, size = raw[offset:offset + 4], struct.unpack_from("<I", raw, offset + 4)[0]
        end = offset + 8 + size + (size & 1)
        if chunk_id == b"data":
            return offset + 8 + size == len(raw)
        offset = end
    return False


def _write(path: Path, samples: np.ndarray, rate: int) -> dict:
    sf.write(str(path), np.clip(samples.T, -1.0, 1.0), rate, format="WAV", subtype="PCM_16")
    if not data_chunk_is_last(path):  # libsndfile put a chunk after the audio: k6 would corrupt it
        raise RuntimeError(f"{path}: the wav's data chunk is not last; the load test cannot make it unique")
    return {"path": str(path.resolve()), "seconds": round(samples.shape[-1] / rate, 3), "bytes": path.stat().st_size}


def write_tracks(out: Path, seconds: list[float], sources: list[Path] = ()) -> Path:
    """Render one golden-set track per length in `seconds` (or convert the given
    files) to 16-bit wav under `out`; returns the manifest (tracks.json) path."""
    from musicsplit.audio import decode
    from musicsplit.golden import golden_set

    out.mkdir(parents=True, exist_ok=True)
    tracks = []
    for src in sources:
        audio = decode(Path(src).read_bytes())
        tracks.append(_write(out / f"{Path(src).stem}.wav", audio.samples, audio.sample_rate))
    for i, length in enumerate(seconds):
        item = golden_set(n=1, seconds=length, seed=900 + i)[0]
        tracks.append(_write(out / f"track-{i}-{length:g}s.wav", item.mixture, item.sample_rate))
    if not tracks:
        raise ValueError("a load test needs at least one track: give --track-seconds or --track")
    manifest = out / "tracks.json"
    manifest.write_text(json.dumps(tracks, indent=1))
    return manifest
