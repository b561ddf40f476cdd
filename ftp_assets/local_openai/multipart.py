"""A small multipart/form-data reader for file uploads (the python-multipart package, which
FastAPI's form support needs, is not one of our dependencies)."""

from __future__ import annotations

from email.message import Message


class FormField:
    def __init__(self, filename: str | None, content: bytes) -> None:
        self.filename, self.content = filename, content


def _header_params(value: str) -> Message:
    header = Message()
    header["content-disposition"] = value
    return header


def parse_form(content_type: str, body: bytes) -> dict[str, FormField]:
    """The fields of a multipart/form-data body; ValueError when it is not one."""
    header = Message()
    header["content-type"] = content_type
    boundary = header.get_param("boundary")
    if header.get_content_type() != "multipart/form-data" or not isinstance(boundary, str):
        raise ValueError("expected a multipart/form-data body")
    fields = {}
    for part in body.split(b"--" + boundary.encode())[1:]:
        if part.startswith(b"--"):
            break  # the closing delimiter
        head, separator, content = part.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        if not separator:
            raise ValueError("a multipart part without headers")
        headers = dict(line.split(":", 1) for line in head.decode("utf-8").split("\r\n") if ":" in line)
        disposition = next((value for name, value in headers.items() if name.strip().lower() == "content-disposition"), "")
        params = _header_params(disposition.strip())
        name = params.get_param("name", header="content-disposition")
        if isinstance(name, str):
            fields[name] = FormField(params.get_filename(), content.removesuffix(b"\r\n"))
    return fields
