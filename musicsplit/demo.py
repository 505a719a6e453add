"""`musicsplit demo`: the local stack, end to end, on embedded defaults.

Starts a predictor serving the weight-free DSP baseline (or any model dir
or pretrained name given), renders a track whose true stems are known (or
takes yours), separates it over KServe v2, writes one file per stem and
reports where they are and how good they are: the reference-free quality
the platform measures on every request, and SDR against the true stems.
"""

from __future__ import annotations

import sys
from pathlib import Path

DEFAULT_MODEL = "builtin://dsp-baseline"


def add_commands(sub, serve) -> None:
    p = sub.add_parser("demo", help="start a local stack and separate a track end to end")
    p.add_argument("--out", type=Path, default=Path("out/demo"), help="where stems, track and logs go")
    p.add_argument("--track", type=Path, help="your own audio file (default: a rendered track with known stems)")
    p.add_argument("--seconds", type=float, default=20.0, help="length of the rendered track")
    p.add_argument("--model-dir", default=DEFAULT_MODEL,
                   help="model dir, pretrained name (htdemucs...) or builtin://dsp-baseline (default)")
    p.add_argument("--model-name", default=None, help="name to serve the model under")
    p.set_defaults(func=run_demo)


def _render_track(out: Path, seconds: float):
    from musicsplit.audio import encode
    from musicsplit.golden import golden_set

    item = golden_set(n=1, seconds=seconds, seed=2026)[0]
    path = out / "track.wav"
    path.write_bytes(encode(item.mixture, item.sample_rate, "wav"))
    return path, item


def run_demo(args) -> int:
    from musicsplit.localstack import start_predictor
    from musicsplit.quality import sdr
    from musicsplit.v2client import V2Client

    out: Path = args.out
    (out / "stems").mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    if args.track:
        track, reference = args.track, None
    else:
        track, reference = _render_track(out, args.seconds)
        print(f"rendered a {args.seconds:.0f} s track with known stems: {track}")
    name = args.model_name or ("dsp-baseline" if args.model_dir == DEFAULT_MODEL else Path(args.model_dir).name)
    print(f"starting predictor '{name}' ({args.model_dir}) on 127.0.0.1 ...")
    predictor = start_predictor(args.model_dir, name, log_dir=out / "logs", timeout=600, threads=None)
    try:
        print(f"predictor ready at {predictor.url} (KServe v2 REST; gRPC on {predictor.grpc_url})")
        result = V2Client(predictor.url, timeout=900).separate(
            name, encoded=track.read_bytes(), output_format="wav")
    finally:
        predictor.stop()
    p = result.parameters
    print(f"\nseparated {track.name} with {p['model']} version {p['model_version']} on {p['device']}: "
          f"{float(p['audio_seconds']):.1f} s of audio in {float(p['compute_seconds']):.2f} s "
          f"(real-time factor {float(p['real_time_factor']):.3f}), cost ${float(p['cost_usd']):.6f}")
    print(f"quality score {float(p['quality_score']):.3f} (0..1), "
          f"mixture-consistency SNR {float(p['mixture_snr_db']):.1f} dB")
    if result.warnings:
        print("warnings: " + "; ".join(result.warnings))
    print(f"\nstems in {out / 'stems'}:")
    for stem, blob in result.encoded.items():
        path = out / "stems" / f"{track.stem}.{stem}.wav"
        path.write_bytes(blob)
        line = f"  {path}"
        if reference is not None and stem in reference.stems:
            line += f"   SDR {sdr(reference.stems[stem], result.stems[stem]):6.2f} dB vs the true {stem}"
        print(line)
    if reference is not None:
        print("\n(SDR: higher is better; the weight-free baseline is the quality floor a Demucs model must beat.)")
    return 0
