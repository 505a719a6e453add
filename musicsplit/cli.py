"""`musicsplit`: the one command line for users and operators.

Each component contributes its subcommands through an
`add_commands(sub, serve)` function in its own `cli` module (`sub`: top-level
subcommands such as `separate`; `serve`: the `musicsplit serve <component>`
group), listed in COMMAND_MODULES; this module
only assembles them, so components stay importable without one another's
heavy dependencies until a command is actually run. A component image installs
only its own package (setup.py): the commands of absent components are left out.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = [
    "musicsplit.predictor.cli",
    "musicsplit.gateway.cli",
    "musicsplit.demo",
    "musicsplit.operator.cli",
    "musicsplit.evaluate",
    "musicsplit.loadtest.cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="musicsplit", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run a component's server").add_subparsers(
        dest="component", required=True
    )
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if not exc.name or not name.startswith(exc.name + "."):
                raise  # the component is there but one of its imports is not: say so
            continue
        module.add_commands(sub, serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # A command that wraps another tool's parser (KServe's ModelServer flags)
    # sets `passthrough` and parses the rest itself.
    if extra and not getattr(args, "passthrough", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
