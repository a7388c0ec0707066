"""Spool a multipart upload once, reading its small form fields on the way.

The router must know the `model` field before it can pick a family server, but the file part may be
large. `spool` reads the body once into a temporary file (in memory up to 1 MB, on disk beyond),
parsing the multipart stream as it goes and keeping only the values of small text fields; the body
is then forwarded byte for byte, streamed from the spool, so an upload is never held twice.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import IO

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

SPOOL_IN_MEMORY = 1 << 20
MAX_FIELD_BYTES = 4096  # text fields longer than this are not kept (prompts are forwarded, not read)
CHUNK = 1 << 16


@dataclass
class SpooledUpload:
    body: IO[bytes]
    size: int
    content_type: str
    fields: dict[str, str] = field(default_factory=dict)

    async def chunks(self) -> AsyncIterator[bytes]:
        self.body.seek(0)
        while chunk := self.body.read(CHUNK):
            yield chunk

    def close(self) -> None:
        self.body.close()


async def spool(request: Request) -> SpooledUpload:
    """Read the request body into a spool; parse text fields if it is multipart/form-data."""
    content_type = request.headers.get("content-type", "")
    media_type, params = parse_options_header(content_type)
    body = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)  # noqa: SIM115 (closed by SpooledUpload.close)
    fields: dict[str, str] = {}
    parser = _field_parser(params.get(b"boundary", b""), fields) if media_type == b"multipart/form-data" else None
    size = 0
    async for chunk in request.stream():
        body.write(chunk)
        size += len(chunk)
        if parser is not None:
            parser.write(chunk)
    if parser is not None:
        parser.finalize()
    return SpooledUpload(body, size, content_type, fields)


def _field_parser(boundary: bytes, fields: dict[str, str]) -> MultipartParser | None:
    if not boundary:
        return None
    return MultipartParser(boundary, _FieldCollector(fields).callbacks())  # type: ignore[arg-type]


class _FieldCollector:
    """MultipartParser callbacks that keep the values of small text fields (not of files)."""

    def __init__(self, fields: dict[str, str]) -> None:
        self.fields = fields
        self.on_part_begin()

    def on_part_begin(self) -> None:
        self.header = b""
        self.disposition = b""
        self.data = bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        if self.header.lower() == b"content-disposition":
            self.disposition += data[start:end]

    def on_header_end(self) -> None:
        self.header = b""

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if len(self.data) <= MAX_FIELD_BYTES:
            self.data += data[start:end]

    def on_part_end(self) -> None:
        _, options = parse_options_header(self.disposition)
        name = options.get(b"name")
        if name is not None and b"filename" not in options and len(self.data) <= MAX_FIELD_BYTES:
            self.fields.setdefault(name.decode(errors="replace"), self.data.decode(errors="replace"))

    def callbacks(self) -> dict[str, object]:
        names = ("on_part_begin", "on_header_field", "on_header_value", "on_header_end", "on_part_data", "on_part_end")
        return {name: getattr(self, name) for name in names}
