"""Presigned uploads: large inputs go from the client straight to the bucket.

  POST /v1/uploads {"bytes": N}  -> a presigned PUT URL for PREFIX/TENANT/uploads/<upload id>
  PUT the file there (Content-Type: application/octet-stream, Content-Length: N)
  POST /v1/separations upload_id=<upload id>  -> a job, as from a file in the body

The key is made here from the caller's tenant and an id of ours, never
from anything the client names, and the gateway only ever reads objects
under the caller's own prefix: no client-given URL or key is fetched (no
SSRF, no reading another tenant's upload). An upload is checked for size
(HEAD) before it is read, then streamed to local staging and validated
block by block like any upload. Only an S3 result store offers uploads.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from musicsplit.errors import BadRequest, NotFound, PayloadTooLarge, Unsupported
from musicsplit.gateway.storage.results import ResultStore
from musicsplit.gateway.storage.results_s3 import UPLOAD_CONTENT_TYPE, S3ResultStore

UPLOAD_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class UploadSlot:
    upload_id: str
    url: str
    headers: dict[str, str]
    expires_at: float
    max_bytes: int


class Uploads:
    def __init__(self, results: ResultStore, max_bytes: int):
        self.store = results if isinstance(results, S3ResultStore) else None
        self.max_bytes = max_bytes

    @property
    def available(self) -> bool:
        return self.store is not None

    def _store(self) -> S3ResultStore:
        if self.store is None:
            raise Unsupported("this gateway keeps inputs on its local disk, so it offers no presigned uploads "
                              "(they need MUSICSPLIT_GATEWAY_STORAGE_URL=s3://...); send the file in the body "
                              "of POST /v1/separations")
        return self.store

    def key(self, tenant: str, upload_id: str) -> str:
        if not UPLOAD_ID.match(upload_id):
            raise BadRequest(f"upload_id {upload_id[:64]!r} is not one POST /v1/uploads returned "
                             "(32 hex characters)")
        return f"{self._store().tenant_prefix(tenant)}uploads/{upload_id}"

    def _check_size(self, size: int) -> None:
        if size > self.max_bytes:
            raise PayloadTooLarge(f"the upload is {size} bytes, over the limit of {self.max_bytes} bytes; "
                                  "split the track")

    async def create(self, tenant: str, size: int) -> UploadSlot:
        """A presigned PUT for `size` bytes under the tenant's prefix."""
        store = self._store()
        if size <= 0:
            raise BadRequest("bytes must be the file's size in bytes (> 0)")
        self._check_size(size)
        upload_id = uuid.uuid4().hex
        # Content-Length is signed: the bucket refuses a body of any other size.
        url = await asyncio.to_thread(store.presign, "put_object", self.key(tenant, upload_id),
                                      ContentType=UPLOAD_CONTENT_TYPE, ContentLength=size)
        return UploadSlot(upload_id, url, {"Content-Type": UPLOAD_CONTENT_TYPE, "Content-Length": str(size)},
                          time.time() + store.url_expiry_s, self.max_bytes)

    async def fetch(self, tenant: str, upload_id: str, dest: Path) -> int:
        """The tenant's upload, size-checked, copied to the local file `dest`; its size."""
        store = self._store()
        key = self.key(tenant, upload_id)
        head = await asyncio.to_thread(store.head, key)
        if head is None:
            raise NotFound(f"no upload {upload_id}: PUT the file to the URL POST /v1/uploads returned (it may "
                           "have expired, or been used by a job already), then create the job")
        size = int(head["ContentLength"])
        if size > self.max_bytes:
            await self.delete(tenant, upload_id)
            self._check_size(size)
        await asyncio.to_thread(store.client.download_file, store.bucket, key, str(dest))
        return size

    async def delete(self, tenant: str, upload_id: str) -> None:
        store = self._store()
        await asyncio.to_thread(store.client.delete_object, Bucket=store.bucket, Key=self.key(tenant, upload_id))

    async def sweep(self, older_than_s: float) -> int:
        """Delete uploads never turned into a job (every tenant's prefix)."""
        if self.store is None:
            return 0
        return await asyncio.to_thread(self._sweep, self.store, older_than_s)

    @staticmethod
    def _sweep(store: S3ResultStore, older_than_s: float) -> int:
        root = f"{store.prefix}/" if store.prefix else ""
        cutoff = time.time() - older_than_s
        count = 0
        paginator = store.client.get_paginator("list_objects_v2")
        for tenants in paginator.paginate(Bucket=store.bucket, Prefix=root, Delimiter="/"):
            for tenant in tenants.get("CommonPrefixes", []):
                for page in paginator.paginate(Bucket=store.bucket, Prefix=f"{tenant['Prefix']}uploads/"):
                    old = [{"Key": o["Key"]} for o in page.get("Contents", [])
                           if o["LastModified"].timestamp() < cutoff]
                    if old:
                        store.client.delete_objects(Bucket=store.bucket, Delete={"Objects": old, "Quiet": True})
                        count += len(old)
        return count
