"""Which result store the settings name (results.py is the interface; this module picks an
implementation, so the interface imports none of them)."""

from __future__ import annotations

from musicsplit.gateway.storage.results import ResultStore


def make_result_store(settings) -> ResultStore:
    """The store `storage_url` names: an s3:// bucket, or when empty the local data dir."""
    if settings.storage_url:
        from musicsplit.gateway.storage.results_s3 import S3ResultStore

        return S3ResultStore.from_settings(settings)
    from musicsplit.gateway.storage.results_local import LocalResultStore

    return LocalResultStore(settings.data_dir, settings.staging_dir)
