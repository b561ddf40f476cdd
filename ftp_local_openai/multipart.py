"""Reading a multipart/form-data upload as it streams in, with python-multipart's parser (the one
FastAPI's own form support uses): file parts go straight to disk, text fields stay in memory, and
the body is capped, so an upload of any size costs the service little memory."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

MAX_PARTS = 8  # an upload has two fields; more is a malformed (or hostile) body
MAX_FIELD_BYTES = 64 * 1024  # a text field (the purpose) is a few bytes


class FormError(ValueError):
    """The body is not a well-formed multipart/form-data body; the message says why."""


class UploadTooLarge(Exception):
    """The body is larger than the service takes."""


@dataclass
class UploadedFile:
    filename: str
    path: Path  # a temporary file, removed when the form is done with unless moved away
    size: int = 0


@dataclass
class Form:
    fields: dict[str, str] = field(default_factory=dict)
    files: dict[str, UploadedFile] = field(default_factory=dict)

    def names(self) -> set[str]:
        return set(self.fields) | set(self.files)


def _utf8(raw: bytes | bytearray, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise FormError(f"{what} is not UTF-8") from None


class _FormReader:
    """python-multipart's callbacks: each part's headers name it, then its data goes to a file
    (a part with a filename) or to a text field."""

    def __init__(self, upload_dir: Path) -> None:
        self.form = Form()
        self.finished = False
        self._upload_dir = upload_dir
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._disposition: bytes | None = None
        self._name = ""
        self._text: bytearray | None = None
        self._sink: IO[bytes] | None = None

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda data, start, end: self._header_name.extend(data[start:end]),
            "on_header_value": lambda data, start, end: self._header_value.extend(data[start:end]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }

    def _part_begin(self) -> None:
        self._disposition = None

    def _header_end(self) -> None:
        _utf8(self._header_value, "a part's header")
        if self._header_name.strip().lower() == b"content-disposition":
            self._disposition = bytes(self._header_value)
        self._header_name.clear()
        self._header_value.clear()

    def _headers_finished(self) -> None:
        if self._disposition is None:
            raise FormError("a part has no Content-Disposition header")
        _, options = parse_options_header(self._disposition)
        name = options.get(b"name", b"").decode()
        if not name:
            raise FormError("a part has no name")
        if name in self.form.names():
            raise FormError(f"the field {name!r} is given twice")
        if len(self.form.names()) == MAX_PARTS:
            raise FormError(f"it has more than {MAX_PARTS} parts")
        self._name = name
        if b"filename" in options:
            self._sink = tempfile.NamedTemporaryFile(dir=self._upload_dir, delete=False)  # noqa: SIM115 (closed at part end or discard)
            self.form.files[name] = UploadedFile(options[b"filename"].decode(), Path(self._sink.name))
        else:
            self._text = bytearray()

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._sink is not None:
            # A chunk of at most a few dozen KiB: written at once, as the store writes its files.
            self._sink.write(data[start:end])
            self.form.files[self._name].size += end - start
        elif self._text is not None:
            self._text.extend(data[start:end])
            if len(self._text) > MAX_FIELD_BYTES:
                raise FormError(f"the field {self._name!r} is longer than {MAX_FIELD_BYTES} bytes")

    def _part_end(self) -> None:
        if self._sink is not None:
            self._sink.close()
            self._sink = None
        elif self._text is not None:
            self.form.fields[self._name] = _utf8(self._text, f"the field {self._name!r}")
            self._text = None

    def _end(self) -> None:
        self.finished = True

    def discard(self) -> None:
        """Removes the files of the form that were not moved away."""
        if self._sink is not None:
            self._sink.close()
        for upload in self.form.files.values():
            upload.path.unlink(missing_ok=True)


@asynccontextmanager
async def read_form(
    content_type: str, body: AsyncIterator[bytes], upload_dir: Path, max_bytes: int
) -> AsyncIterator[Form]:
    """The form in ``body``, read as it streams in; its files are temporary files in
    ``upload_dir``, removed on exit unless moved away. Raises FormError for a malformed body and
    UploadTooLarge as soon as the body passes ``max_bytes``, without reading the rest."""
    kind, parameters = parse_options_header(content_type)
    boundary = parameters.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise FormError("expected a multipart/form-data body with a boundary")
    reader = _FormReader(upload_dir)
    try:
        try:
            parser = MultipartParser(boundary, reader.callbacks())
            received = 0
            async for chunk in body:
                received += len(chunk)
                if received > max_bytes:
                    raise UploadTooLarge
                parser.write(chunk)
        except FormParserError:
            raise FormError("it does not follow the multipart format") from None
        if not reader.finished:
            raise FormError("it ends before its closing boundary")
        yield reader.form
    finally:
        reader.discard()
