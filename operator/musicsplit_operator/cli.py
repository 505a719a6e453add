"""`musicsplit serve operator`: run the kopf operator."""

from __future__ import annotations

import argparse
import random


def add_commands(sub, serve) -> None:
    p = serve.add_parser("operator", help="run the SeparationModel operator (kopf)")
    scope = p.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", action="append", default=[],
                       help="watch this namespace (repeatable; default: all namespaces)")
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch all namespaces (default)")
    p.add_argument("--standalone", action="store_true",
                   help="no peering: the only replica (local runs, tests)")
    p.add_argument("--peering", default="musicsplit-operator",
                   help="kopf peering object shared by the replicas (leader election)")
    p.add_argument("--priority", type=int, default=None,
                   help="peering priority; the highest live replica runs, the others pause "
                        "(default: random, so equal replicas never tie)")
    p.add_argument("--liveness", default="http://0.0.0.0:8080/healthz",
                   help="kopf liveness endpoint (empty to disable)")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=serve_operator)


def serve_operator(args: argparse.Namespace) -> int:
    import logging

    import kopf

    from . import handlers  # noqa: F401  registers the handlers

    kopf.configure(verbose=args.verbose, log_format=kopf.LogFormat.PLAIN)
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    priority = args.priority if args.priority is not None else random.randint(1, 2**31 - 1)
    kopf.run(
        standalone=args.standalone,
        peering_name=None if args.standalone else args.peering,
        priority=None if args.standalone else priority,
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        liveness_endpoint=args.liveness or None,
    )
    return 0
