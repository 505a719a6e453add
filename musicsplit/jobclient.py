"""The gateway's job API for large files: a presigned upload, a job, its stems.

  POST /v1/uploads {"bytes": N} -> PUT the file to the presigned URL (straight to the bucket)
  -> POST /v1/separations upload_id=... -> follow the job -> download each stem (307 to the bucket)

Used by `musicsplit separate` above its upload threshold, where one v2
request would carry the whole file through the gateway (audio-separator
switches the same way for files over 30 MiB). A server without uploads (a
predictor, a gateway on local storage) says so with 404/405/501:
`UploadsUnavailable`, and the caller sends the file the other way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import httpx

from musicsplit.v2client import V2Error

TERMINAL = ("succeeded", "failed", "cancelled", "expired")


class UploadsUnavailable(Exception):
    """The server offers no presigned uploads."""


@dataclass
class JobResult:
    job: dict
    stems: dict[str, bytes] = field(default_factory=dict)


def _error(r: httpx.Response) -> V2Error:
    try:
        body = r.json()
        return V2Error(r.status_code, body.get("error") or r.text, code=body.get("code"))
    except ValueError:
        return V2Error(r.status_code, r.text)


def _chunks(path: Path, size: int = 1024 * 1024) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while block := f.read(size):
            yield block


def separate_via_upload(url: str, path: Path, *, model: str, stems: list[str] | None = None,
                        output_format: str = "wav", shifts: int | None = None, timeout: float = 900.0,
                        headers: dict[str, str] | None = None,
                        on_progress: Callable[[str, float], None] = lambda what, fraction: None) -> JobResult:
    """Separate a local file through the gateway's presigned upload; UploadsUnavailable if it has none,
    V2Error for any refusal (the gateway's message)."""
    size = path.stat().st_size
    with httpx.Client(base_url=url, timeout=60.0, headers=headers or {}) as client:
        r = client.post("/v1/uploads", json={"bytes": size})
        if r.status_code in (404, 405, 501):
            raise UploadsUnavailable(_error(r).message)
        if r.status_code != 201:
            raise _error(r)
        slot = r.json()
        on_progress("uploading", 0.0)
        # Straight to the bucket: a client of its own (the gateway's headers are not the bucket's business).
        put = httpx.put(slot["url"], content=_chunks(path), headers=slot["headers"], timeout=timeout)
        if put.status_code >= 300:
            raise V2Error(put.status_code, f"the upload to storage failed: {put.text[:500]}")
        form = {"upload_id": slot["upload_id"], "model": model, "output_format": output_format}
        if stems:
            form["stems"] = ",".join(stems)
        if shifts is not None:
            form["shifts"] = str(shifts)
        r = client.post("/v1/separations", data=form)
        if r.status_code != 202:
            raise _error(r)
        job = r.json()
        deadline = time.monotonic() + timeout
        while job["status"] not in TERMINAL:
            on_progress(job["status"], job["progress"]["fraction"])
            if time.monotonic() > deadline:
                raise V2Error(504, f"job {job['id']} still {job['status']} after {timeout:.0f} s")
            time.sleep(0.5)
            r = client.get(f"/v1/separations/{job['id']}")
            if r.status_code != 200:
                raise _error(r)
            job = r.json()
        if job["status"] != "succeeded":
            error = job.get("error") or {}
            raise V2Error(422, f"job {job['id']} {job['status']}: {error.get('error', '')}", code=error.get("code"))
        on_progress("downloading", 1.0)
        out = JobResult(job)
        for stem, stem_url in job["stems"].items():
            r = client.get(stem_url, follow_redirects=True, timeout=timeout)
            if r.status_code != 200:
                raise _error(r)
            out.stems[stem] = r.content
        return out
