"""/v1/uploads: presigned uploads of large inputs straight to the shared bucket (uploads.py)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from musicsplit.gateway.api.schemas import E400, E401, E403, E413, E429, E501, UploadRequest, UploadView
from musicsplit.gateway.service import SeparationService, service_of
from musicsplit.gateway.tenancy.callers import Caller, caller

# Authenticated like every user route (tenancy.caller): the upload goes under the caller's tenant prefix.
router = APIRouter(tags=["separations"], responses={401: E401, 403: E403, 429: E429})


@router.post("/v1/uploads", status_code=201, response_model=UploadView,
             responses={400: E400, 413: E413, 501: E501},
             summary="Get a presigned URL to upload a large file straight to storage")
async def create_upload(body: UploadRequest, service: Annotated[SeparationService, Depends(service_of)],
                        who: Annotated[Caller, Depends(caller)]) -> UploadView:
    """PUT the file to `url` with `headers` (Content-Type `application/octet-stream`: a form content
    type makes some S3 implementations store an empty object), then `POST /v1/separations` with
    `upload_id`. The object lives under your tenant's prefix; only you can turn it into a job, and
    it is deleted once used or after a day. 501 where the gateway's storage is a local disk."""
    slot = await service.uploads.create(who.tenant, body.bytes)
    return UploadView(upload_id=slot.upload_id, url=slot.url, headers=slot.headers, expires_at=slot.expires_at,
                      max_bytes=slot.max_bytes)
