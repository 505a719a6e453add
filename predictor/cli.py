"""`musicsplit serve predictor` and `musicsplit separate`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def add_commands(sub, serve) -> None:
    p = serve.add_parser(
        "predictor", add_help=False,
        help="serve a Demucs model over KServe v2 (all KServe ModelServer flags apply; --help lists them)",
    )
    p.set_defaults(func=serve_predictor, passthrough=True)

    s = sub.add_parser("separate", help="separate a file through a predictor or gateway (v2)")
    s.add_argument("file", type=Path, help="audio file (wav, flac, ogg, mp3)")
    s.add_argument("--url", required=True, help="predictor or gateway base URL, e.g. http://127.0.0.1:8080")
    s.add_argument("--model", required=True, help="model name (or a gateway alias such as 'default')")
    s.add_argument("--out", type=Path, default=Path("separated"), help="output folder (one file per stem)")
    s.add_argument("--stems", help="comma-separated stems, e.g. vocals,no_vocals (default: all)")
    s.add_argument("--format", default="wav", choices=["wav", "flac"], help="stem file format")
    s.add_argument("--shifts", type=int, help="random shifts averaged (Demucs' --shifts)")
    s.add_argument("--overlap", type=float, help="overlap between model segments")
    s.add_argument("--timeout", type=float, default=900.0, help="request timeout in seconds")
    s.add_argument("--upload-threshold", type=float, default=30.0, metavar="MIB",
                   help="files larger than this many MiB go to a gateway as a presigned upload and a job, "
                        "where the gateway offers uploads (default 30)")
    s.add_argument("--api-key", dest="api_key", default=os.environ.get("MUSICSPLIT_API_KEY"),
                   help="a gateway API key or OIDC token, sent as Authorization: Bearer (default: "
                        "$MUSICSPLIT_API_KEY)")
    s.set_defaults(func=separate_file)

    m = sub.add_parser("model-manifest", help="write a model dir's musicsplit.yaml (version, sha256 of each file)",
                       description="Load a model dir (either Demucs layout) on CPU, then write its "
                                   "musicsplit.yaml: name, version, stems, sample rate and the sha256 of every "
                                   ".yaml, .safetensors and .th file, which the predictor checks before loading.")
    m.add_argument("dir", type=Path, help="the model dir, e.g. a snapshot of hf://adefossez/HTDemucs")
    m.add_argument("--version", required=True, help="the release's version (a SeparationModel's spec.model.version)")
    m.add_argument("--name", help="the bag to serve, where the dir holds several")
    m.add_argument("--released", help="release date, YYYY-MM-DD")
    m.add_argument("--source", help="where the files came from (URL)")
    m.set_defaults(func=model_manifest)


def model_manifest(args) -> int:
    from musicsplit.predictor.loading import ModelLoadError
    from musicsplit.predictor.manifest import write_manifest

    try:
        doc = write_manifest(args.dir, args.version, args.name, args.released, args.source)
    except ModelLoadError as exc:
        print(f"musicsplit model-manifest: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.dir / 'musicsplit.yaml'}: {doc['name']} {doc['version']}, {len(doc['files'])} files hashed")
    return 0


def predictor_parser() -> argparse.ArgumentParser:
    from kserve import model_server

    parser = argparse.ArgumentParser(
        prog="musicsplit serve predictor", parents=[model_server.parser], conflict_handler="resolve",
        description="Serve one separation model over KServe v2 (REST + gRPC) with /metrics.",
    )
    parser.add_argument("--model_dir", default=None,
                        help="model dir (Demucs' files in its Hugging Face layout, <name>.yaml + "
                             "<sig>.safetensors, or its legacy <sig>-<sha8>.th one, + optional "
                             "musicsplit.yaml), a storage URI (hf://owner/repo[:revision], s3://, gs://, "
                             "...: fetched with kserve-storage), a pretrained name (htdemucs, htdemucs_ft, "
                             "htdemucs_6s, mdx_extra...) or builtin://dsp-baseline. Default /mnt/models "
                             "(KServe's mount)")
    parser.add_argument("--storage_uri", default=None, help="alias of --model_dir (KServe's name)")
    parser.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N")
    parser.add_argument("--precision", default=None, help="auto (default), fp32, bf16, fp16")
    parser.add_argument("--segment_batch", type=int, default=None,
                        help="segments of a track per forward pass (0 = auto: 4 on CUDA, 1 on CPU)")
    parser.add_argument("--max_inflight", type=int, default=None, help="inferences at once per replica")
    parser.add_argument("--max_queue", type=int, default=None, help="requests that may wait; more get 429")
    parser.add_argument("--no_warmup", action="store_true", help="skip the warm-up inference")
    return parser


def serve_predictor(args) -> int:
    from musicsplit.predictor.server import serve
    from musicsplit.predictor.settings import PredictorSettings

    ns = predictor_parser().parse_args(args.extra)
    overrides = {"model_name": ns.model_name}
    if ns.model_dir or ns.storage_uri:
        overrides["model_dir"] = ns.model_dir or ns.storage_uri
    for key in ("device", "precision", "segment_batch", "max_inflight", "max_queue"):
        if getattr(ns, key) is not None:
            overrides[key] = getattr(ns, key)
    if ns.no_warmup:
        overrides["warmup"] = False
    settings = PredictorSettings(**overrides)
    serve(settings, {
        "http_port": ns.http_port, "grpc_port": ns.grpc_port, "enable_grpc": ns.enable_grpc,
        "workers": 1, "max_threads": ns.max_threads, "enable_docs_url": ns.enable_docs_url,
    })
    return 0


def separate_file(args) -> int:
    from tqdm import tqdm

    from musicsplit.v2client import V2Client, V2Error

    if not args.file.is_file():
        print(f"error: {args.file} does not exist", file=sys.stderr)
        return 2
    stems = args.stems.split(",") if args.stems else None
    if args.file.stat().st_size > args.upload_threshold * 1024 * 1024:
        done = _separate_via_upload(args, stems)
        if done is not None:
            return done
    data = args.file.read_bytes()
    with tqdm(total=3, desc=f"separating {args.file.name}", unit="step",
              bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}") as bar:
        bar.set_postfix_str("uploading")
        auth = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else None
        client = V2Client(args.url, timeout=args.timeout, headers=auth)
        bar.update(1)
        bar.set_postfix_str(f"model {args.model} running")
        try:
            result = client.separate(args.model, encoded=data, stems=stems, shifts=args.shifts,
                                     overlap=args.overlap, output_format=args.format)
        except V2Error as exc:
            bar.close()
            print(f"error: {exc.status}: {exc.message}", file=sys.stderr)
            return 1
        bar.update(1)
        bar.set_postfix_str("writing stems")
        args.out.mkdir(parents=True, exist_ok=True)
        written = []
        for name, blob in result.encoded.items():
            path = args.out / f"{args.file.stem}.{name}.{args.format}"
            path.write_bytes(blob)
            written.append(path)
        bar.update(1)
        bar.set_postfix_str("done")
    p = result.parameters
    print(f"model {p.get('model')} version {p.get('model_version')} on {p.get('device')}: "
          f"{float(p.get('audio_seconds', 0)):.1f} s of audio in {float(p.get('compute_seconds', 0)):.2f} s, "
          f"quality estimate {float(p.get('quality_score', 0)):.3f} (~{float(p.get('quality_estimated_sdr_db', 0)):.1f} dB SDR; "
          f"mixture SNR {float(p.get('mixture_snr_db', 0)):.1f} dB), "
          f"cost ${float(p.get('cost_usd', 0)):.6f}")
    if result.warnings:
        print("warnings: " + "; ".join(result.warnings))
    for path in written:
        print(f"  {path}")
    return 0


def _separate_via_upload(args, stems: list[str] | None) -> int | None:
    """A large file through the gateway's presigned upload and job API; None where the server offers
    no uploads (a predictor, a gateway on local storage): the caller sends it as one v2 request."""
    from tqdm import tqdm

    from musicsplit.jobclient import UploadsUnavailable, separate_via_upload
    from musicsplit.v2client import V2Error

    with tqdm(total=1.0, desc=f"separating {args.file.name}",
              bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}") as bar:
        def progress(what: str, fraction: float) -> None:
            bar.n = fraction
            bar.set_postfix_str(what)

        try:
            auth = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else None
            result = separate_via_upload(args.url, args.file, model=args.model, stems=stems,
                                         output_format=args.format, shifts=args.shifts, timeout=args.timeout,
                                         headers=auth, on_progress=progress)
        except UploadsUnavailable:
            bar.close()
            print(f"{args.url} takes no presigned uploads: sending the file in one request", file=sys.stderr)
            return None
        except V2Error as exc:
            bar.close()
            print(f"error: {exc.status}: {exc.message}", file=sys.stderr)
            return 1
    args.out.mkdir(parents=True, exist_ok=True)
    job = result.job
    print(f"model {job['model']} version {job['model_version']} (job {job['id']}, uploaded to storage): "
          f"{float(job['audio_seconds'] or 0):.1f} s of audio in {float(job['compute_seconds'] or 0):.2f} s, "
          f"quality {float(job['quality_score'] or 0):.3f}, cost ${float(job['cost_usd'] or 0):.6f}")
    if job["warnings"]:
        print("warnings: " + "; ".join(job["warnings"]))
    for name, blob in result.stems.items():
        path = args.out / f"{args.file.stem}.{name}.{args.format}"
        path.write_bytes(blob)
        print(f"  {path}")
    return 0
