"""Render the dashboards to grafana/dashboards/*.json (what the chart ships).

    python -m grafana.render            # write the files
    python -m grafana.render --check    # exit 1 and name the stale files

Run it from the repository root after changing anything in grafana/ and
commit the JSON with the change; tests/grafana fails on a stale file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from grafana_foundation_sdk.cog.encoder import JSONEncoder

from . import canary, cost, overview, quality, users

OUT = Path(__file__).resolve().parent / "dashboards"
DASHBOARDS = {"overview": overview, "quality": quality, "canary": canary, "cost": cost, "users": users}


def render() -> dict[str, str]:
    """File name -> JSON text, for every dashboard."""
    encoder = JSONEncoder(sort_keys=True, indent=2)
    return {f"musicsplit-{name}.json": encoder.encode(module.build()) + "\n" for name, module in DASHBOARDS.items()}


def stale(out: Path = OUT) -> list[str]:
    """Files under `out` that differ from a fresh render, are missing, or are left over."""
    fresh = render()
    present = {p.name for p in out.glob("*.json")}
    differ = [n for n, text in fresh.items() if n not in present or (out / n).read_text() != text]
    return sorted(differ + sorted(present - set(fresh)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grafana.render", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file is stale")
    parser.add_argument("--out", type=Path, default=OUT, help=f"output directory (default {OUT})")
    args = parser.parse_args(argv)
    if args.check:
        bad = stale(args.out)
        for name in bad:
            print(f"stale: {args.out / name} (run: python -m grafana.render)", file=sys.stderr)
        return 1 if bad else 0
    args.out.mkdir(parents=True, exist_ok=True)
    fresh = render()
    for leftover in set(p.name for p in args.out.glob("*.json")) - set(fresh):
        (args.out / leftover).unlink()
    for name, text in fresh.items():
        (args.out / name).write_text(text)
        print(args.out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
