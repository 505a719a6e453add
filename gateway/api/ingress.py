"""Bounded ingress: every request body is counted while it streams, and uploads go to disk as they arrive.

`BodyLimit` (ASGI middleware, outermost): a Content-Length over the limit is
refused before a byte of the body is read; otherwise each `http.request`
chunk is counted, with or without Content-Length, and the chunk that passes
the limit ends the request with 413 at once: the route's reading stops and
the answer goes out while the client may still be sending. An answer given
before the body was read whole (a 413, a 401 before an upload) says
`Connection: close`, so the server never reads the rest. A retryable refusal
(429 or 503, with Retry-After) is different: the client did nothing wrong and
must be able to read it, but most HTTP clients (k6, Go, httpx) write the whole
body before reading and report a broken pipe, not the 429, when the server
closes under them (the load test saw 19 of ~1,900 uploads fail so). So the
rest of the body, within the limit, is read and discarded (never buffered)
for up to DRAIN_SECONDS, as nginx's lingering close does, before the refusal
goes out on a connection that stays open. At most `max_drains` refusals
drain at once; beyond that a refusal closes the connection like a 413 (a
flood of refused uploads must not hold the gateway's sockets and time).

`read_form`: multipart/form-data parsed as it streams (python-multipart's
push parser), after the route's credentials and quotas were checked. Parts
are counted (text fields and files each bounded, a repeated name counting
each time), and so are each part's headers and all header bytes. Text
fields are small and bounded; each file is written to a staging file with
its SHA-256 computed on the way and refused as soon as it passes the
per-file limit. Only the part being read is held; nothing of an ended part
is kept but its field's value or its staged file's name. Nothing is
buffered whole in memory.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable
from urllib.parse import parse_qsl

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from musicsplit.errors import BadRequest, PayloadTooLarge
from musicsplit.gateway import metrics

FORM_OVERHEAD_BYTES = 1024 * 1024  # a form's boundaries, headers and text fields, beyond its files
MAX_FIELD_BYTES = 8192
MAX_FIELDS = 16  # text parts, whatever their names (one name repeated counts each time)
MAX_PART_HEADERS = 8  # per part (python-multipart's parser enforces it, and the line length)
MAX_HEADER_LINE_BYTES = 4096
MAX_HEADER_BYTES = 16384  # all parts' header lines together
DRAIN_STATUSES = (429, 503)  # refusals a client retries: it must be able to read them
DRAIN_SECONDS = 30.0


def too_large(received: int, limit: int, *, so_far: bool) -> str:
    amount = f"more than {limit} bytes" if so_far else f"{received} bytes"
    return (f"request is {amount}, over the limit of {limit} bytes; split the track or use the gateway's "
            "chunked jobs")


class BodyLimit:
    """Refuse request bodies over `max_bytes` (JSON 413), counting what streams in."""

    def __init__(self, app: ASGIApp, max_bytes: int, max_drains: int = 16, body_timeout_s: float = 30.0):
        self.app = app
        self.max_bytes = max_bytes
        self.body_timeout_s = body_timeout_s
        self.max_drains = max_drains
        self.draining = 0  # refusals reading the rest of their bodies now

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            metrics.REJECTED.labels(reason="payload_too_large").inc()
            await _send_refusal(send, too_large(int(length), self.max_bytes, so_far=False))
            return
        received = 0
        unread = (length.isdigit() and int(length) > 0) or b"transfer-encoding" in headers
        started = False
        timed_out = False

        async def counted() -> Message:
            nonlocal received, unread
            if not unread:  # after the body (e.g. waiting for a disconnect): no deadline
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.body_timeout_s)
            except TimeoutError:
                # Answered here, at once; the app sees the client gone and whatever it answers is dropped.
                nonlocal timed_out
                if not started:
                    timed_out = True
                    await _send_refusal(send, f"the request body stalled: nothing arrived for {self.body_timeout_s:g} "
                                              "s; send it without pauses (or use a presigned upload: POST /v1/uploads)",
                                        408)
                return {"type": "http.disconnect"}
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                unread = message.get("more_body", False)
                if received > self.max_bytes:
                    metrics.REJECTED.labels(reason="payload_too_large").inc()
                    # An HTTPException: FastAPI passes these on from its own body parsing too.
                    raise HTTPException(413, too_large(received, self.max_bytes, so_far=True))
            return message

        async def drain() -> bool:
            """Read and discard the rest of the body; False if it passes the limit, the client goes away
            or DRAIN_SECONDS pass first."""
            nonlocal received
            try:
                async with asyncio.timeout(DRAIN_SECONDS):
                    while True:
                        message = await receive()
                        if message["type"] != "http.request":
                            return False
                        received += len(message.get("body", b""))
                        if received > self.max_bytes:
                            return False
                        if not message.get("more_body", False):
                            return True
            except TimeoutError:
                return False

        async def sending(message: Message) -> None:
            nonlocal started, unread
            if timed_out:
                return
            if message["type"] == "http.response.start":
                started = True
                if unread and message["status"] in DRAIN_STATUSES and self.draining < self.max_drains:
                    self.draining += 1
                    try:
                        unread = not await drain()
                    finally:
                        self.draining -= 1
                if unread:  # answered before the body was read (refused): do not read the rest
                    message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        try:
            await self.app(scope, counted, sending)
        except HTTPException as exc:  # not answered inside (no handler saw it): answer here
            if exc.status_code != 413 or started:
                raise
            await _send_refusal(send, str(exc.detail))


async def _send_refusal(send: Send, message: str, status: int = 413) -> None:
    code = PayloadTooLarge.code if status == 413 else "request_timeout"
    body = json.dumps({"error": message, "code": code}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


@dataclass
class UploadedFile:
    """One file of a form, on disk in the staging area."""

    field: str
    filename: str | None
    path: Path
    size: int
    sha256: str


@dataclass
class Form:
    fields: dict[str, str] = field(default_factory=dict)
    files: list[UploadedFile] = field(default_factory=list)

    def discard(self) -> None:
        """Delete the staged files (those not taken over by a job)."""
        for f in self.files:
            f.path.unlink(missing_ok=True)


class _Part:
    def __init__(self) -> None:
        self.headers: dict[bytes, bytes] = {}
        self.name = ""
        self.data = bytearray()
        self.upload: UploadedFile | None = None
        self.file: BinaryIO | None = None
        self.hash = hashlib.sha256()


SEND_FILE = "send the audio as a multipart/form-data field named 'file' (e.g. curl -F file=@song.flac)"


async def read_form(request: Request, staging: Callable[[], Path], *, max_file_bytes: int, max_files: int,
                    expected: str = SEND_FILE) -> Form:
    """The form of a multipart (or, without files, urlencoded) request; BadRequest / PayloadTooLarge
    saying what is wrong (files deleted). `expected`: what to send instead of a body that is no form."""
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    if content_type == b"application/x-www-form-urlencoded":
        return await _read_urlencoded(request)
    if content_type != b"multipart/form-data" or b"boundary" not in options:
        raise BadRequest(expected)
    form = Form()
    current: list[_Part] = []  # the part being read, if any: nothing of an ended part is kept
    pending: list[tuple[_Part, bytes | None]] = []  # file data to write off the loop; None: the part ended
    header_name = bytearray()
    header_value = bytearray()
    count = {"fields": 0, "header_bytes": 0}

    def part_begin() -> None:
        if count["fields"] + len(form.files) >= MAX_FIELDS + max_files:
            raise BadRequest(f"more than {MAX_FIELDS + max_files} parts in the form; send the file(s) and at "
                             f"most {MAX_FIELDS} fields")
        current[:] = [_Part()]

    def header_bytes(n: int) -> None:
        count["header_bytes"] += n
        if count["header_bytes"] > MAX_HEADER_BYTES:
            raise BadRequest(f"the form's part headers are longer than {MAX_HEADER_BYTES} bytes in all")

    def header_field(data: bytes, start: int, end: int) -> None:
        header_bytes(end - start)
        header_name.extend(data[start:end])

    def header_val(data: bytes, start: int, end: int) -> None:
        header_bytes(end - start)
        header_value.extend(data[start:end])

    def header_end() -> None:
        current[0].headers[bytes(header_name).lower()] = bytes(header_value)
        header_name.clear()
        header_value.clear()

    def headers_finished() -> None:
        part = current[0]
        _, disposition = parse_options_header(part.headers.get(b"content-disposition", b""))
        part.headers = {}
        if b"name" not in disposition:
            raise BadRequest("a form part has no name (Content-Disposition: form-data; name=...)")
        part.name = disposition[b"name"].decode("utf-8", "replace")
        if b"filename" in disposition:
            if len(form.files) >= max_files:
                raise BadRequest(f"more than {max_files} files in one request; send at most {max_files}")
            path = staging()
            path.parent.mkdir(parents=True, exist_ok=True)
            part.upload = UploadedFile(part.name, disposition[b"filename"].decode("utf-8", "replace") or None,
                                       path, 0, "")
            form.files.append(part.upload)
            part.file = open(path, "wb")  # noqa: SIM115 - closed at the part's end or on any error
        else:
            count["fields"] += 1
            if count["fields"] > MAX_FIELDS:
                raise BadRequest(f"more than {MAX_FIELDS} form fields")

    def part_data(data: bytes, start: int, end: int) -> None:
        part = current[0]
        if part.upload is None:
            if len(part.data) + end - start > MAX_FIELD_BYTES:
                raise BadRequest(f"form field {part.name!r} is longer than {MAX_FIELD_BYTES} bytes")
            part.data.extend(data[start:end])
            return
        part.upload.size += end - start
        if part.upload.size > max_file_bytes:
            metrics.REJECTED.labels(reason="payload_too_large").inc()
            raise PayloadTooLarge(f"file {part.upload.filename or part.name!r} is over the limit of {max_file_bytes} "
                                  "bytes; split the track or use the gateway's chunked jobs")
        pending.append((part, data[start:end]))

    def part_end() -> None:
        part = current.pop()
        if part.upload is None:
            form.fields[part.name] = part.data.decode("utf-8", "replace")
        else:
            pending.append((part, None))  # closed, and its hash kept, once its data is written

    parser = MultipartParser(options[b"boundary"], {
        "on_part_begin": part_begin, "on_part_data": part_data, "on_part_end": part_end,
        "on_header_field": header_field, "on_header_value": header_val, "on_header_end": header_end,
        "on_headers_finished": headers_finished},
        max_header_count=MAX_PART_HEADERS, max_header_size=MAX_HEADER_LINE_BYTES)
    try:
        async for chunk in request.stream():
            parser.write(chunk)
            if pending:  # hashing and writing off the event loop, one hop per chunk received
                await asyncio.to_thread(_write, list(pending))
                pending.clear()
        parser.finalize()
        if pending:
            await asyncio.to_thread(_write, list(pending))
            pending.clear()
        if current:
            raise BadRequest("the multipart/form-data body ends inside a part")
    except FormParserError as exc:  # its messages name the bound passed, e.g. "Maximum header count exceeded"
        _abort(current + [p for p, _ in pending], form)
        raise BadRequest(f"the multipart/form-data body is malformed: {exc} (at most {MAX_PART_HEADERS} headers "
                         f"per part, {MAX_HEADER_LINE_BYTES} bytes per header line)") from None
    except BaseException:
        _abort(current + [p for p, _ in pending], form)
        raise
    return form


async def _read_urlencoded(request: Request) -> Form:
    """A form without files (e.g. a job from a presigned upload: upload_id=...), bounded like the
    text fields of a multipart form."""
    limit = MAX_FIELDS * (MAX_FIELD_BYTES + 64)
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > limit:
            raise BadRequest(f"the form is longer than {limit} bytes: send the audio as multipart/form-data")
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False,
                          max_num_fields=MAX_FIELDS)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest(f"the form is malformed ({exc})") from None
    return Form(fields=dict(pairs))


def _write(pending: list[tuple[_Part, bytes | None]]) -> None:
    for part, data in pending:
        if data is None:  # the part ended: its file is whole
            part.file.close()  # type: ignore[union-attr]
            part.upload.sha256 = part.hash.hexdigest()  # type: ignore[union-attr]
            continue
        part.hash.update(data)
        part.file.write(data)  # type: ignore[union-attr]


def _abort(parts: list[_Part], form: Form) -> None:
    """Close the files still open (deleted with the form's staged files)."""
    for part in parts:
        if part.file is not None and not part.file.closed:
            part.file.close()
    form.discard()
