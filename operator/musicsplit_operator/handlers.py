"""kopf handlers: start and stop the operator's workers (kept in kopf's
memo), and run one reconcile tick per SeparationModel (reconcile.py).

Import this module to register the handlers (`musicsplit serve operator` does).
"""

from __future__ import annotations

import logging
import tempfile
from contextlib import contextmanager, nullcontext

import kopf
from kubernetes import config as k8s_config

from . import api, goldenset, kserve, metrics, probe, registry, reconcile, reporting, verification, webhooks
from .goldenstore import GoldenStore
from .scheduler import ProbeJob
from .settings import OperatorSettings
from .spec import GROUP, PLURAL, VERSION

# Read once at import: the timer's interval is fixed when the handler registers.
SETTINGS = OperatorSettings()
log = logging.getLogger(__name__)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, logger, **_) -> None:
    settings.persistence.finalizer = "musicsplit.io/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="musicsplit.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="musicsplit.io", key="last-handled-configuration")
    settings.posting.level = logging.getLevelName(SETTINGS.event_log_level)
    if SETTINGS.metrics_port:
        metrics.serve(SETTINGS.metrics_port, SETTINGS.metrics_address)
    settings.watching.server_timeout = 60
    # A deleted SeparationModel keeps its finalizer until its timer stops; a tick
    # that is running at that moment is checked again after this many seconds
    # (kopf's default, 60, held deletions for a minute). Ticks are short: no
    # probe or other long call runs in one.
    settings.background.cancellation_polling = 1
    # The CRD is installed before the operator (manifests/, the chart): no need
    # to watch CRDs, so no RBAC for them.
    settings.scanning.disabled = True
    try:
        k8s_config.load_incluster_config()
    except k8s_config.ConfigException:
        k8s_config.load_kube_config()
    s = SETTINGS
    op = reconcile.Operator(settings=s)
    op.kserve, how = kserve.detect(s.kserve_api)
    logger.info("KServe: %s", how)
    op.golden_store = GoldenStore(
        s.golden_cache_dir or tempfile.mkdtemp(prefix="musicsplit-golden-"),
        allowlist=s.golden_storage_allowlist, max_set_bytes=s.golden_set_max_bytes,
        max_cache_bytes=s.golden_cache_max_bytes, timeout_s=s.golden_fetch_timeout_seconds,
        ttl_s=s.golden_cache_ttl_seconds)
    op.probes = probe.ProbeWorker(api.write_worker_fields, workers=s.probe_workers, timeout_s=s.probe_timeout_seconds,
                                  load_set=lambda job: load_golden_set(job, op.golden_store, s.golden_set_max_seconds))
    op.verifier = verification.VerifyWorker(
        api.write_worker_fields, workers=s.probe_workers, timeout_s=s.probe_timeout_seconds,
        load_set=lambda job: load_golden_set(job, op.golden_store, s.golden_set_max_seconds))
    if s.mlflow_tracking_uri:
        registry.preload()
        op.reports = reporting.ReportWorker(
            api.write_worker_fields, lambda: registry.client(s.mlflow_tracking_uri, s.mlflow_timeout_seconds),
            prometheus_timeout_s=s.prometheus_timeout_seconds)
    op.hooks = webhooks.WebhookWorker(api.write_worker_fields, workers=s.webhook_workers, rule=op.webhook_rule())
    memo.operator = op
    logger.info("musicsplit operator: tick %.1fs, %d golden-set probe workers, %d webhook workers",
                s.tick_seconds, s.probe_workers, s.webhook_workers)


@kopf.on.cleanup()
def stop_workers(memo: kopf.Memo, **_) -> None:
    op = getattr(memo, "operator", None)
    for worker in op.workers() if op is not None else ():
        worker.shutdown()


@contextmanager
def load_golden_set(job: ProbeJob, store: GoldenStore | None, max_seconds: float):
    """The probe job's golden set, its fetched files kept until the job ends."""
    with (store.pinned() if store is not None else nullcontext(None)) as fetch:
        yield goldenset.load(job.golden_set, job.namespace, read_configmap=api.read_configmap, fetch=fetch,
                             max_seconds=max_seconds)


@kopf.timer(GROUP, VERSION, PLURAL, id="reconcile", interval=SETTINGS.tick_seconds, initial_delay=0.0, sharp=False)
def tick(body, name, namespace, patch, memo: kopf.Memo, logger, **_) -> None:
    try:
        reconcile.run(memo.operator, body, name, namespace, patch, logger)
    except Exception as e:
        why = api.retry_later(e)
        if why is None:
            raise
        # The API server is away or refused (a restart, an upgrade, throttling, RBAC
        # reloading). Raising would make kopf log a traceback and wait its default
        # backoff (60 s) before the next tick; the status is the only state, so the
        # next tick, one interval on, simply reads everything again. Logged here, not
        # through kopf's object logger, which would post an Event to that server.
        log.warning("[%s/%s] %s; next tick in %gs", namespace, name, why, SETTINGS.tick_seconds)
