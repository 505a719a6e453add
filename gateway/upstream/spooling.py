"""What a v2 request may hold while it is in flight: a place among the replica's v2 requests, its body
spooled for retries, the head of its answer.

A v2 request may carry up to the body limit (200 MiB) and its answer several
times that (one FP32 tensor per stem). So: at most `v2_max_concurrent`
requests per replica are in flight (`Slots`: 429 beyond, never a queue); a
body is spooled (`SpooledBody`: memory up to a few MiB, then a file in the
staging area) so that a retry on another endpoint can send it again; and the
answer streams to the client. Only the answer's JSON part is read
(`read_head`), for the model version, quality and audio seconds the gateway
reports: a binary answer's JSON header (Inference-Header-Content-Length), or
a JSON answer up to `v2_max_parsed_response_bytes` (a bigger one streams
unread).
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterable, AsyncIterator, BinaryIO

import httpx

from musicsplit.errors import PayloadTooLarge, Saturated
from musicsplit.gateway import metrics
from musicsplit.gateway.api.ingress import too_large

SPOOL_IN_MEMORY = 1024 * 1024
BLOCK = 1024 * 1024
JSON_LENGTH = "inference-header-content-length"
FORWARDED = ("content-type", JSON_LENGTH)  # the request's and the answer's headers a v2 client relies on


class Slots:
    """Requests in flight; one event loop, so a counter suffices."""

    def __init__(self, size: int):
        self.size = size
        self.free = size

    def take(self) -> None:
        if self.free <= 0:
            metrics.REJECTED.labels(reason="v2_saturated").inc()
            raise Saturated(f"{self.size} v2 requests are in flight on this gateway; try again shortly",
                            retry_after=1)
        self.free -= 1

    def give(self) -> None:
        self.free = min(self.size, self.free + 1)


class SpooledBody:
    """A request body kept for retries: in memory up to a few MiB, then in a staging file."""

    def __init__(self, staging: Path):
        staging.mkdir(parents=True, exist_ok=True)
        self.file: BinaryIO = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY, dir=staging)  # type: ignore
        self.length = 0

    async def fill(self, content: AsyncIterable[bytes], max_bytes: int) -> None:
        """Take a request's body (`request.stream()`); PayloadTooLarge as soon as it passes `max_bytes`."""
        buffer = bytearray()
        async for chunk in content:
            buffer.extend(chunk)
            if self.length + len(buffer) > max_bytes:
                metrics.REJECTED.labels(reason="payload_too_large").inc()
                raise PayloadTooLarge(too_large(self.length + len(buffer), max_bytes, so_far=True))
            if len(buffer) >= BLOCK:
                await asyncio.to_thread(self.file.write, bytes(buffer))
                self.length += len(buffer)
                buffer.clear()
        self.file.write(bytes(buffer))
        self.length += len(buffer)

    async def append(self, chunk: bytes) -> None:
        """Add bytes at the end (an answer kept as it streams by)."""
        self.file.seek(0, 2)
        await asyncio.to_thread(self.file.write, chunk)
        self.length += len(chunk)

    def read_all(self) -> bytes:
        """The whole body, in memory (blocking: call it in a thread)."""
        return _read_at(self.file, 0, self.length)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body from the start (every try gets its own iterator)."""
        offset = 0
        while offset < self.length:
            block = await asyncio.to_thread(_read_at, self.file, offset, BLOCK)
            if not block:
                break
            offset += len(block)
            yield block

    def close(self) -> None:
        self.file.close()


def _read_at(f: BinaryIO, offset: int, size: int) -> bytes:
    f.seek(offset)
    return f.read(size)


@dataclass
class Head:
    """What was read of an answer before streaming it on: its bytes so far and its parameters."""

    data: bytes
    parameters: dict


async def read_head(response: httpx.Response, chunks: AsyncIterator[bytes], max_parsed: int) -> Head:
    """Read the answer's JSON part, only as far as needed, and parse its `parameters`; an answer of
    unknown length, or whose JSON is over `max_parsed`, is not read at all."""
    binary = response.headers.get(JSON_LENGTH, "")
    length = response.headers.get("content-length", "")
    want = int(binary) if binary.isdigit() else int(length) if length.isdigit() else None
    if want is None or want > max_parsed:
        return Head(b"", {})
    data = bytearray()
    async for chunk in chunks:
        data.extend(chunk)
        if len(data) >= want:
            break
    try:
        parameters = json.loads(bytes(data[:want])).get("parameters", {}) or {}
    except (ValueError, AttributeError):
        parameters = {}
    return Head(bytes(data), parameters)
