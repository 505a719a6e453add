"""`musicsplit demo`: the local stack, end to end, on embedded defaults.

Starts a predictor serving the weight-free DSP baseline (or any model dir
or pretrained name given) and a gateway in front of it, takes a real
music excerpt whose true stems are known (CC0, musicsplit/golden_audio; or
renders a synthetic track, or takes yours), uploads it as a job, follows
its per-chunk progress over the WebSocket, downloads one file per stem and
reports where they are and how good they are: the reference-free quality
the platform measures on every request, and SDR against the true stems.
"""

from __future__ import annotations

import json
from pathlib import Path

DEFAULT_MODEL = "builtin://dsp-baseline"
DEFAULT_EXCERPT = "lithium-112s"


def add_commands(sub, serve) -> None:
    p = sub.add_parser("demo", help="start a local stack and separate a track end to end")
    p.add_argument("--out", type=Path, default=Path("out/demo"), help="where stems, track and logs go")
    p.add_argument("--track", type=Path,
                   help="your own audio file (default: a 10 s real music excerpt with its true stems)")
    p.add_argument("--synthetic", action="store_true",
                   help="separate a rendered synthetic track with known stems instead of the real excerpt")
    p.add_argument("--seconds", type=float, default=20.0, help="length of the synthetic track")
    p.add_argument("--model-dir", default=DEFAULT_MODEL,
                   help="model dir, pretrained name (htdemucs...) or builtin://dsp-baseline (default)")
    p.add_argument("--model-name", default=None, help="name to serve the model under")
    p.set_defaults(func=run_demo)


def _reference_track(out: Path, synthetic: bool, seconds: float):
    from musicsplit.audio import encode
    from musicsplit.golden import golden_set, real_item

    item = golden_set(n=1, seconds=seconds, seed=2026)[0] if synthetic else real_item(DEFAULT_EXCERPT)
    path = out / "track.wav"
    path.write_bytes(encode(item.mixture, item.sample_rate, "wav"))
    return path, item


def _follow(gateway_url: str, job: dict) -> dict:
    """Per-chunk progress from the job's WebSocket, as a progress bar, until it ends."""
    from tqdm import tqdm
    from websockets.sync.client import connect

    last = job
    with tqdm(total=1.0, desc="separating", bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}") as bar:
        with connect(gateway_url.replace("http", "ws", 1) + job["progress_url"], open_timeout=30) as ws:
            for raw in ws:
                last = json.loads(raw)
                bar.n = last.get("progress", 0.0)
                bar.set_postfix_str(f"{last['status']}, chunk {last['chunks_done']}/{last['chunks_total']}")
                if last["status"] in ("succeeded", "failed", "cancelled", "expired"):
                    break
    return last


def _estimated_sdr(score: float) -> float:
    """The estimate's dB figure back from its 0..1 score (the calibration's logistic)."""
    import math

    from musicsplit.quality import shipped_calibration

    cal = shipped_calibration()
    score = min(max(score, 1e-6), 1 - 1e-6)
    return cal.centre_db + cal.scale_db * math.log(score / (1 - score))


def run_demo(args) -> int:
    import httpx

    from musicsplit.audio import decode
    from musicsplit.localstack import start_gateway, start_predictor
    from musicsplit.quality import sdr

    out: Path = args.out
    for sub in ("stems", "logs", "gateway"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    if args.track:
        track, reference = args.track, None
    else:
        track, reference = _reference_track(out, args.synthetic, args.seconds)
        what = "rendered a synthetic" if args.synthetic else f"real music (CC0 excerpt {DEFAULT_EXCERPT}):"
        print(f"{what} {reference.seconds:.0f} s track with known stems: {track}")
    name = args.model_name or ("dsp-baseline" if args.model_dir == DEFAULT_MODEL else Path(args.model_dir).name)
    logs = out / "logs"
    print(f"starting predictor '{name}' ({args.model_dir}) ...")
    predictor = start_predictor(args.model_dir, name, log_dir=logs, timeout=600, threads=None)
    try:
        print(f"  predictor ready at {predictor.url} (KServe v2; gRPC on {predictor.grpc_url})")
        # 8 s chunks: even the short demo track goes through the chunked, per-chunk-progress path.
        gateway = start_gateway([(name, predictor.url)], data_dir=out / "gateway", log_dir=logs,
                                default_model=name, env={"MUSICSPLIT_GATEWAY_CHUNK_SECONDS": "8"})
        try:
            print(f"  gateway ready at {gateway.url} (API docs: {gateway.url}/docs)")
            with httpx.Client(base_url=gateway.url, timeout=120) as client:
                submitted = client.post("/v1/separations", files={"file": (track.name, track.read_bytes())},
                                        data={"output_format": "wav"}, headers={"X-User-Id": "demo"})
                if submitted.status_code != 202:
                    print(f"error: {submitted.status_code}: {submitted.json().get('error')}")
                    return 1
                job = submitted.json()
                print(f"uploaded {track.name}: job {job['id']}")
                last = _follow(gateway.url, job)
                job = client.get(f"/v1/separations/{job['id']}").json()
                if job["status"] != "succeeded":
                    print(f"job {job['status']}: {(job.get('error') or {}).get('error', last)}")
                    return 1
                stems = {stem: client.get(url).content for stem, url in job["stems"].items()}
        finally:
            gateway.stop()
    finally:
        predictor.stop()
    print(f"\nseparated {track.name} with {job['model']} version {job['model_version']} (arm {job['arm']}): "
          f"{job['audio_seconds']:.1f} s of audio in {job['compute_seconds']:.2f} s of compute, "
          f"cost ${job['cost_usd']:.6f}")
    estimate = _estimated_sdr(job["quality_score"])
    print(f"quality estimate {job['quality_score']:.3f} (0..1, reference-free, measured on every request; "
          f"about {estimate:.1f} dB of SDR)")
    if job["warnings"]:
        print("warnings: " + "; ".join(job["warnings"]))
    print(f"\nstems in {out / 'stems'}:")
    true_sdr = []
    for stem, blob in stems.items():
        path = out / "stems" / f"{track.stem}.{stem}.wav"
        path.write_bytes(blob)
        line = f"  {path}"
        if reference is not None and stem in reference.stems:
            score = sdr(reference.stems[stem], decode(blob).samples)
            true_sdr.append(min(max(score, -10.0), 25.0))
            line += f"  SDR {score:6.2f} dB vs the true {stem}"
        print(line)
    if true_sdr:
        print(f"\ntrue SDR (mean over stems, each within -10..25 dB) {sum(true_sdr) / len(true_sdr):.2f} dB "
              f"beside the estimate's {estimate:.1f} dB: the estimate never sees the true stems (docs/quality.md)")
        print("SDR: higher is better; the weight-free baseline is the quality floor a Demucs model must beat.")
    print(f"logs: {logs}")
    return 0
