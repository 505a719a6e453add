"""A deterministic golden set: synthetic mixtures whose stems are known exactly.

Each item is a short stereo track in four stems, built the way the stems
differ in real music (the cues separators rely on): drums are percussive
bursts on a beat grid, bass is low and harmonic, vocals are a vibrato
harmonic tone with formants panned centre, other is chords panned wide.
The same arguments give bit-identical audio on a given platform (and equal
to float rounding across CPUs, whose sin/exp may differ in the last bit),
so SDR on it can gate canaries and be compared across model versions.

Beside them, `real_items()`: two 10 s excerpts of a CC0 song with its true
stems (golden_audio/README.md), so a version's score on real music is
visible apart from the synthetic items. `builtin_set()` is both.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

STEMS = ("drums", "bass", "other", "vocals")  # Demucs' order
# Mixture gains (RMS) per stem, roughly as in a pop mix.
LEVELS = {"drums": 0.12, "bass": 0.10, "other": 0.07, "vocals": 0.09}
PEAK = 0.9
FORMANTS_HZ = ((700.0, 130.0), (1220.0, 170.0), (2600.0, 250.0))  # an open "a" vowel
PROGRESSIONS = ((0, 5, 7, 0), (0, 9, 5, 7), (0, 7, 9, 5), (0, 3, 8, 7))  # semitones above the key
REAL_AUDIO = Path(__file__).resolve().parent / "golden_audio"
REAL_EXCERPTS = ("lithium-112s", "lithium-196s")


@dataclass
class GoldenItem:
    name: str
    mixture: np.ndarray  # float32 [2, T]: exactly the sum of the stems
    stems: dict[str, np.ndarray]  # float32 [2, T] each, in STEMS order
    sample_rate: int

    @property
    def seconds(self) -> float:
        return self.mixture.shape[-1] / self.sample_rate


def _hz(midi: np.ndarray | float) -> np.ndarray:
    return 440.0 * 2.0 ** ((np.asarray(midi, dtype=np.float64) - 69) / 12)


def _envelope(t: np.ndarray, attack: float, decay: float) -> np.ndarray:
    """Linear attack then exponential decay, t = seconds since the note started."""
    return np.where(t < attack, t / attack, np.exp(-(t - attack) / decay))


def _pan(mono: np.ndarray, position: float) -> np.ndarray:
    """Constant-power pan: -1 left, 0 centre, 1 right."""
    angle = (position + 1) * np.pi / 4
    return np.stack([np.cos(angle) * mono, np.sin(angle) * mono])


def _drums(rng, n, sr, beat):
    t = np.arange(n) / sr
    out = np.zeros((2, n))
    for i, start in enumerate(np.arange(0, n / sr, beat / 2)):  # eighth-note grid
        s = int(start * sr)
        seg = t[: n - s]
        if i % 2 == 0 and (i // 2) % 2 == 0:  # kick on beats 1 and 3
            length = min(len(seg), int(0.4 * sr))
            tt = seg[:length]
            phase = 2 * np.pi * (45 * tt + 75 * 0.04 * (1 - np.exp(-tt / 0.04)))  # 120 -> 45 Hz sweep
            out[:, s:s + length] += np.sin(phase) * _envelope(tt, 0.002, 0.12)
        if i % 4 == 2:  # snare on beats 2 and 4
            length = min(len(seg), int(0.25 * sr))
            tt = seg[:length]
            body = np.sin(2 * np.pi * 190 * tt) * _envelope(tt, 0.001, 0.05)
            noise = rng.standard_normal((2, length)) * _envelope(tt, 0.001, 0.07)
            out[:, s:s + length] += 0.6 * body + 0.5 * noise
        length = min(len(seg), int(0.06 * sr))  # closed hi-hat on every eighth, slightly right
        noise = np.diff(rng.standard_normal(length + 1))  # first difference: a crude high-pass
        out[:, s:s + length] += _pan(0.25 * noise * _envelope(seg[:length], 0.0005, 0.015), 0.3)
    return out


def _notes(n, sr, starts, pitches, lengths):
    """Per-sample pitch (midi, NaN between notes), time since onset, fade-out gain."""
    midi = np.full(n, np.nan)
    since = np.zeros(n)
    fade = np.zeros(n)
    for start, pitch, length in zip(starts, pitches, lengths):
        a, b = int(start * sr), int((start + length) * sr)
        if a >= n:
            continue
        midi[a:b] = pitch
        since[a:b] = np.arange(min(b, n) - a) / sr
        # 10 ms release: a note cut dead clicks, and a click is broadband.
        fade[a:b] = np.minimum(np.arange(b - a, 0, -1) / (0.01 * sr), 1.0)[: min(b, n) - a]
    return midi, since, fade


def _harmonic(notes, sr, harmonics, amps, attack, decay, vibrato=0.0):
    """A tone following `notes` made of `harmonics`; amps(k, freq_hz) weights harmonic k."""
    midi, since, fade = notes
    on = ~np.isnan(midi)
    pitches, which = np.unique(np.where(on, midi, 60.0), return_inverse=True)
    f0 = _hz(pitches)[which]
    if vibrato:
        depth = vibrato / 12 * np.minimum(since / 0.3, 1)  # vibrato fades in over 0.3 s, as sung
        f0 = f0 * 2.0 ** (depth * np.sin(2 * np.pi * 5.5 * np.arange(len(midi)) / sr))
    phase = 2 * np.pi * np.cumsum(f0) / sr
    # sin(k x) by the Chebyshev recurrence: one sin/cos pair instead of one sin per harmonic.
    two_cos, prev, cur = 2 * np.cos(phase), np.zeros(len(midi)), np.sin(phase)
    tone = np.zeros(len(midi))
    for k in range(1, max(harmonics) + 1):
        if k in harmonics:
            fk = k * _hz(pitches)
            tone += np.where(fk < 0.45 * sr, amps(k, fk), 0.0)[which] * cur
        prev, cur = cur, two_cos * cur - prev
    return tone * _envelope(since, attack, decay) * fade


def _formants(k, fk):
    return sum(np.exp(-0.5 * ((fk - c) / w) ** 2) for c, w in FORMANTS_HZ) + 0.3 / k


def _item(rng, n, sr):
    tempo = rng.uniform(90, 140)
    beat = 60.0 / tempo
    key = 36 + int(rng.integers(0, 12))  # bass register root (C2..B2)
    prog = PROGRESSIONS[int(rng.integers(len(PROGRESSIONS)))]
    bar = 4 * beat
    bars = int(np.ceil(n / sr / bar))
    roots = [key + prog[b % len(prog)] for b in range(bars)]

    # Bass: root on every beat, sawtooth-like (1/k harmonics), centre.
    starts = np.arange(bars * 4) * beat
    bass_pitch = [roots[i // 4] + (12 if i % 4 == 3 else 0) for i in range(len(starts))]
    notes = _notes(n, sr, starts, bass_pitch, [0.9 * beat] * len(starts))
    bass = _pan(_harmonic(notes, sr, range(1, 7), lambda k, f: 1.0 / k * (f < 400), 0.01, 0.5), 0.0)

    # Other: a triad per bar two octaves up, voices spread hard left / right.
    other = np.zeros((2, n))
    for voice, (interval, pan) in enumerate(zip((0, 4, 7, 12), (-0.9, 0.8, -0.6, 0.95))):
        pitches = [r + 24 + interval - (1 if interval == 4 and p in (3, 8, 9) else 0)
                   for r, p in zip(roots, (prog[b % len(prog)] for b in range(bars)))]
        notes = _notes(n, sr, np.arange(bars) * bar, pitches, [bar] * bars)
        tone = _harmonic(notes, sr, (1, 3, 5, 7), lambda k, f: 1.0 / k**2, 0.05, 2.0)
        other += _pan(tone, pan)

    # Vocals: a phrase of quarter/half notes on the scale, gaps between phrases, centre.
    scale = np.array([0, 2, 4, 5, 7, 9, 11, 12])
    starts, pitches, lengths = [], [], []
    t = beat
    while t < n / sr:
        length = beat * float(rng.choice([1, 1, 2]))
        if rng.random() > 0.15:  # a rest now and then
            starts.append(t)
            pitches.append(key + 24 + int(rng.choice(scale)))
            lengths.append(0.95 * length)
        t += length
    notes = _notes(n, sr, starts, pitches, lengths)
    vocals = _pan(_harmonic(notes, sr, range(1, 16), _formants, 0.04, 1.5, vibrato=0.4), 0.0)

    return {"drums": _drums(rng, n, sr, beat), "bass": bass, "other": other, "vocals": vocals}


def golden_item(i: int, seconds: float = 6.0, sample_rate: int = 44100, seed: int = 0) -> GoldenItem:
    """Item `i` of `golden_set(...)` alone, the same bits."""
    length = int(round(seconds * sample_rate))
    rng = np.random.default_rng([seed, i])
    raw = _item(rng, length, sample_rate)
    stems = {k: raw[k] * (LEVELS[k] / max(np.sqrt(np.mean(raw[k] ** 2)), 1e-12)) for k in STEMS}
    # One gain for all stems so the mixture stays the exact sum and never clips.
    gain = min(1.0, PEAK / np.max(np.abs(sum(stems.values()))))
    stems = {k: (v * gain).astype(np.float32) for k, v in stems.items()}
    mixture = np.sum([stems[k] for k in STEMS], axis=0, dtype=np.float32)
    return GoldenItem(f"golden-{seed}-{i:02d}", mixture, stems, sample_rate)


def golden_set(n: int = 4, seconds: float = 6.0, sample_rate: int = 44100, seed: int = 0) -> list[GoldenItem]:
    """`n` synthetic stereo mixtures with known stems (~0.2 s per 6 s item); same arguments, same bits."""
    return [golden_item(i, seconds, sample_rate, seed) for i in range(n)]


def real_item(excerpt: str) -> GoldenItem:
    """One real excerpt (REAL_EXCERPTS) with its true stems; the mixture is their float32 sum."""
    import soundfile as sf

    if excerpt not in REAL_EXCERPTS:
        raise KeyError(f"unknown excerpt {excerpt!r}; known: {', '.join(REAL_EXCERPTS)}")
    stems, rates = {}, set()
    for stem in STEMS:
        data, rate = sf.read(REAL_AUDIO / excerpt / f"{stem}.flac", dtype="float32", always_2d=True)
        stems[stem], rates = np.ascontiguousarray(data.T), rates | {rate}
    mixture = np.sum([stems[k] for k in STEMS], axis=0, dtype=np.float32)
    return GoldenItem(f"real-{excerpt}", mixture, stems, rates.pop())


def real_items() -> list[GoldenItem]:
    """The real CC0 excerpts (44.1 kHz stereo, 10 s each)."""
    return [real_item(e) for e in REAL_EXCERPTS]


def builtin_set() -> list[GoldenItem]:
    """The built-in golden set: the four synthetic items and the real excerpts."""
    return golden_set() + real_items()
