"""`musicsplit serve gateway` and `musicsplit ab-report`."""

from __future__ import annotations

import argparse
import os
import sys

# Settings of the gateway's own Slack/PagerDuty sender, removed (docs/adr/0208-paging-through-alertmanager.md).
REMOVED_SETTINGS = {f"MUSICSPLIT_GATEWAY_{name}" for name in
                    ("SLACK_WEBHOOK_URL", "PAGERDUTY_ROUTING_KEY", "PAGERDUTY_URL", "NOTIFY_DEDUP_S")}


def _endpoint(value: str) -> dict:
    """MODEL=URL[@REGION]"""
    try:
        model, rest = value.split("=", 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: use MODEL=URL or MODEL=URL@REGION") from None
    url, _, region = rest.partition("@")
    return {"model": model, "url": url, "region": region or "local"}


def serve(args) -> int:
    import logging

    import uvicorn

    from musicsplit.gateway.app import create_app
    from musicsplit.gateway.error_reports import init_sentry
    from musicsplit.gateway.api.serving import uvicorn_config
    from musicsplit.gateway.settings import GatewaySettings
    from musicsplit.telemetry import setup_tracing

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides = {k: v for k, v in {
        "host": args.host, "port": args.port, "data_dir": args.data_dir, "default_model": args.default_model,
        "fallback_model": args.fallback_model, "cache_backend": args.cache,
        "endpoints": args.endpoint or None, "region_order": args.region_order.split(",") if args.region_order else None,
        "unleash_url": args.unleash_url, "api_keys_file": args.api_keys_file, "metrics_port": args.metrics_port,
    }.items() if v is not None}
    settings = GatewaySettings(**overrides)
    setup_tracing("musicsplit-gateway")
    init_sentry(settings.sentry_dsn.get_secret_value() if settings.sentry_dsn else None)
    ignored = sorted(k for k in os.environ if k in REMOVED_SETTINGS)
    if ignored:  # an old deployment's secrets: say where paging went rather than drop them silently
        logging.getLogger(__name__).warning(
            "%s no longer read: the gateway does not page; Alertmanager pages on its metrics "
            "(set alerting.pagerduty / alerting.slack in the chart; docs/adr/0208-paging-through-alertmanager.md)",
            ", ".join(ignored))
    try:
        app = create_app(settings)
    except ValueError as exc:  # a bad tenants file or OIDC setting: say what, not a traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    uvicorn.Server(uvicorn_config(app, settings)).run()
    return 0


def ab_report(args) -> int:
    import asyncio
    import time

    from musicsplit.gateway.experiments.abtest import report
    from musicsplit.gateway.storage.database import database_url, settings_database_url
    from musicsplit.gateway.storage.jobstore import SqlJobStore
    from musicsplit.gateway.settings import GatewaySettings

    if args.db:  # a URL, or the path of a SQLite file
        url = database_url(args.db if "://" in args.db else f"sqlite:///{args.db}")
    else:
        url = settings_database_url(GatewaySettings())
    since = time.time() - args.days * 86400 if args.days else 0.0

    async def observations() -> list[dict]:
        store = await SqlJobStore.open(url)
        try:
            return await store.observations(since)
        finally:
            await store.close()

    print(report(asyncio.run(observations()), alpha=args.alpha), end="")
    return 0


def add_commands(sub, serve_group) -> None:
    p = serve_group.add_parser("gateway", help="the user-facing API (uploads, jobs, v2 pass-through)",
                               description="Settings come from MUSICSPLIT_GATEWAY_* environment; flags override.")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1: loopback only; 0.0.0.0 to be reachable, as in a container)")
    p.add_argument("--port", type=int)
    p.add_argument("--data_dir")
    p.add_argument("--default_model")
    p.add_argument("--fallback_model")
    p.add_argument("--cache", choices=["disk", "redis", "none"])
    p.add_argument("--endpoint", action="append", type=_endpoint,
                   help="MODEL=URL[@REGION], repeatable (or MUSICSPLIT_GATEWAY_ENDPOINTS as JSON)")
    p.add_argument("--region_order", help="comma-separated regions, nearest first")
    p.add_argument("--unleash_url")
    p.add_argument("--api_keys_file", help="tenants YAML: API key hashes, quotas, callback hosts (without it and "
                                           "without MUSICSPLIT_GATEWAY_OIDC_ISSUER the gateway is open)")
    p.add_argument("--metrics_port", type=int, help="port of /metrics (default 9091; 0: not served)")
    p.set_defaults(func=serve)

    r = sub.add_parser("ab-report", help="per-arm quality/latency with confidence intervals and significance")
    r.add_argument("--db", help="the gateway's jobs.sqlite3, or a postgresql:// URL (default: "
                                "MUSICSPLIT_GATEWAY_DATABASE_URL, else the SQLite file under MUSICSPLIT_GATEWAY_DATA_DIR)")
    r.add_argument("--alpha", type=float, default=0.05)
    r.add_argument("--days", type=float, default=0.0, help="only the last N days (0: all)")
    r.set_defaults(func=ab_report)


__all__ = ["add_commands"]
