"""`musicsplit loadtest SCENARIO` and `musicsplit loadtest-report`.

    musicsplit loadtest ramp --url http://gateway:8080 --out out/loadtest/ramp.json
    musicsplit loadtest arrival --stack                  # measures capacity first, then drives 2x
    musicsplit loadtest all --stack --out out/loadtest   # every scenario, then the report
    musicsplit loadtest-report out/loadtest --docs docs  # docs/loadtest.md + docs/loadtest/*.png
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

# The order `all` runs them in: capacity is measured inside `arrival`.
ALL = ("ramp", "spike", "soak", "arrival")
GOODPUT_GOAL = 0.95  # of capacity, at load_factor x capacity


def add_commands(sub, serve) -> None:
    from musicsplit.loadtest.run import scenarios

    names = sorted(scenarios())
    p = sub.add_parser("loadtest", help="run a k6 load-test scenario against a gateway (or a local stack)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenario", choices=[*names, "all"], help="scenario (loadtest/scenarios.json), or all")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--url", help="gateway base URL (or MUSICSPLIT_LOADTEST_URL)")
    where.add_argument("--stack", action="store_true",
                       help="start a local stack (predictors + gateway on 127.0.0.1) for each scenario")
    p.add_argument("--out", type=Path, help="summary JSON (default out/loadtest/SCENARIO.json); a folder for all")
    p.add_argument("--api-key", help="sent as Authorization: Bearer KEY (or MUSICSPLIT_LOADTEST_API_KEY)")
    p.add_argument("--model", help="model or alias to ask for (default: default)")
    p.add_argument("--rate", type=float, help="arrival: arrivals per second (default: load factor x capacity)")
    p.add_argument("--capacity", type=float,
                   help="arrival: capacity in separations/s (default: measured by the capacity scenario first)")
    p.add_argument("--duration", help="override a constant scenario's duration (k6 form: 20s, 2m)")
    p.add_argument("--predictors", type=int, help="--stack: predictor replicas (default 1)")
    p.add_argument("--v2-share", type=float, help="fraction of iterations through the v2 pass-through")
    p.add_argument("--track-seconds", help="comma-separated lengths of the rendered tracks, e.g. 8,12")
    p.add_argument("--track", action="append", type=Path, default=[], help="upload this audio file too")
    p.add_argument("--no-report", action="store_true", help="all: skip the report")
    p.set_defaults(func=run)

    r = sub.add_parser("loadtest-report", help="turn load-test summaries into docs/loadtest.md with plots")
    r.add_argument("runs", type=Path, nargs="+",
                   help="folders holding NAME.json (with its samples, or NAME.csv.gz beside it) from musicsplit "
                        "loadtest, one per configuration "
                        "(the first gets the plots)")
    r.add_argument("--docs", type=Path, default=Path("docs"), help="writes DOCS/loadtest.md and DOCS/loadtest/*.png")
    r.add_argument("--note", help="a line heading the page, e.g. that the machine was shared with other jobs")
    r.set_defaults(func=report)


def _settings(args):
    from musicsplit.loadtest.settings import LoadtestSettings

    overrides = {k: v for k, v in {
        "url": args.url, "api_key": args.api_key, "model": args.model, "predictors": args.predictors,
        "v2_share": args.v2_share,
        "track_seconds": [float(x) for x in args.track_seconds.split(",")] if args.track_seconds else None,
    }.items() if v is not None}
    return LoadtestSettings(**overrides)


@contextmanager
def _target(args, settings, work: Path):
    """(url, stack): the given gateway, or a fresh local stack torn down afterwards."""
    if not args.stack:
        if not settings.url:
            raise SystemExit("give --url (or MUSICSPLIT_LOADTEST_URL), or --stack to start a local stack")
        yield settings.url, None
        return
    from musicsplit.loadtest.stack import start_stack

    data = Path(tempfile.mkdtemp(prefix="musicsplit-loadtest-"))  # stems of every job: GBs, deleted after
    print(f"starting a local stack: {settings.predictors} x {settings.model_name} ({settings.model_dir}) + gateway",
          flush=True)
    stack = start_stack(work, replicas=settings.predictors, model_dir=settings.model_dir,
                        model_name=settings.model_name, data_dir=data)
    try:
        yield stack.url, stack
    finally:
        stack.stop()
        shutil.rmtree(data, ignore_errors=True)


def _one(scenario: str, out: Path, args, settings, tracks: Path, command: str) -> int:
    from musicsplit.loadtest.results import read_run, save, steady_goodput
    from musicsplit.loadtest.run import run_scenario, scenarios

    meta = {"command": command}
    with _target(args, settings, out.parent / f"stack-{scenario}") as (url, stack):
        rate = args.rate
        if scenario == "arrival" and rate is None:
            factor = float(scenarios()["arrival"]["load_factor"])
            capacity, source = args.capacity, "given (--capacity)"
            if capacity is None:
                cap = run_scenario("capacity", url, out.parent / "capacity.json", settings, tracks=tracks,
                                   stack=stack, extra_meta={"command": command, "measured_for": "arrival"})
                capacity, start, end = steady_goodput(read_run(cap.summary_path))
                source = f"measured: capacity scenario, goodput from {start:.0f} s to {end:.0f} s"
                if capacity <= 0:
                    print("capacity run separated nothing: not driving an arrival rate from it", file=sys.stderr)
                    return 1
            rate = factor * capacity
            meta.update({"capacity": capacity, "capacity_source": source, "load_factor": factor})
            print(f"capacity {capacity:.3f} separations/s ({source}); driving {rate:.3f} arrivals/s", flush=True)
        result = run_scenario(scenario, url, out, settings, tracks=tracks, rate=rate, duration=args.duration,
                              stack=stack, extra_meta=meta)
    code = 0 if result.exit_code == 0 else result.exit_code
    if scenario == "arrival" and meta.get("capacity"):
        goodput, start, end = steady_goodput(read_run(result.summary_path))
        ratio = goodput / meta["capacity"]
        goal = {"goodput": goodput, "window_s": [start, end], "goodput_over_capacity": ratio,
                "goal": GOODPUT_GOAL, "ok": ratio >= GOODPUT_GOAL}
        result.summary["musicsplit"]["goodput_goal"] = goal
        save(result.summary, result.summary_path)
        print(f"goodput {goodput:.3f}/s at {meta['load_factor']:g}x load = {ratio:.1%} of capacity "
              f"(goal >= {GOODPUT_GOAL:.0%}): {'ok' if goal['ok'] else 'MISSED'}")
        code = code or (0 if goal["ok"] else 1)
    print(f"summary: {result.summary_path}  samples: {result.csv_path}")
    return code


def _stop_on_sigterm(signum, _frame):
    raise SystemExit(128 + signum)  # unwinds through `finally`: the stack's processes are stopped


def run(args) -> int:
    from musicsplit.loadtest.tracks import write_tracks

    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    settings = _settings(args)
    command = "musicsplit " + " ".join(sys.argv[1:]) if sys.argv[1:] else "musicsplit loadtest"
    if args.scenario == "all":
        out_dir = args.out or Path("out/loadtest")
    else:
        out_path = args.out or Path("out/loadtest") / f"{args.scenario}.json"
        out_dir = out_path.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    tracks = write_tracks(out_dir / "tracks", settings.track_seconds, args.track)
    if args.scenario != "all":
        return _one(args.scenario, out_path, args, settings, tracks, command)
    codes = [_one(name, out_dir / f"{name}.json", args, settings, tracks, command) for name in ALL]
    if not args.no_report:
        from musicsplit.loadtest.report import write_report

        print(f"report: {write_report(out_dir, Path('docs'))}")
    return max(codes)


def report(args) -> int:
    from musicsplit.loadtest.report import write_report

    print(write_report(args.runs, args.docs, note=args.note))
    return 0
