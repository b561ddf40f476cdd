"""A small multipart/form-data reader for file uploads (FastAPI's own form support needs the
python-multipart package, which is not one of our dependencies)."""

from __future__ import annotations

from dataclasses import dataclass
from email.message import Message


@dataclass(frozen=True)
class FormField:
    filename: str | None
    content: bytes


def _header(name: str, value: str) -> Message:
    """The header as an email message, whose parser knows quoting and RFC 2231 parameters."""
    header = Message()
    header[name] = value
    return header


def parse_form(content_type: str, body: bytes) -> dict[str, FormField]:
    """The fields of a multipart/form-data body; ValueError when it is not one."""
    boundary = _header("content-type", content_type).get_param("boundary")
    if not content_type.lower().startswith("multipart/form-data") or not isinstance(boundary, str):
        raise ValueError("expected a multipart/form-data body")
    fields = {}
    for part in body.split(b"--" + boundary.encode())[1:]:
        if part.startswith(b"--"):
            break  # the closing delimiter
        head, separator, content = part.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        if not separator:
            raise ValueError("a part without headers")
        headers = {}
        for line in head.decode("utf-8").split("\r\n"):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        disposition = _header("content-disposition", headers.get("content-disposition", ""))
        field_name = disposition.get_param("name", header="content-disposition")
        if isinstance(field_name, str):
            fields[field_name] = FormField(disposition.get_filename(), content.removesuffix(b"\r\n"))
    return fields
