"""``/v1/files``: upload, list, retrieve and read files."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request, Response

from .multipart import parse_form
from .responses import ApiError, check_limit, cursor_page, not_found
from .store import Store, file_record

UPLOAD_PURPOSES = frozenset({"assistants", "batch", "fine-tune", "vision", "user_data"})


def files_router(store: Store) -> APIRouter:
    router = APIRouter(prefix="/v1/files")

    def existing_file(file_id: str) -> dict:
        file = store.file(file_id)
        if file is None:
            raise not_found(f"No such File object: {file_id}", param="id")
        return file

    @router.post("")
    async def upload_file(request: Request) -> dict:
        try:
            fields = parse_form(request.headers.get("content-type", ""), await request.body())
        except ValueError as error:
            raise ApiError(400, f"Invalid multipart/form-data body: {error}.") from None
        unknown = sorted(set(fields) - {"file", "purpose"})
        if unknown:
            raise ApiError(400, f"Unrecognized request argument supplied: {unknown[0]}", param=unknown[0])
        upload, purpose_field = fields.get("file"), fields.get("purpose")
        if upload is None or upload.filename is None:
            raise ApiError(400, "Missing required parameter: 'file'.", param="file")
        purpose = purpose_field.content.decode() if purpose_field else None
        if purpose not in UPLOAD_PURPOSES:
            raise ApiError(400, f"Invalid value for 'purpose': {purpose!r}.", param="purpose")
        if purpose == "fine-tune" and not upload.filename.endswith(".jsonl"):
            raise ApiError(400, "Invalid file format for Fine-Tuning API. Must be .jsonl", param="file")
        file = file_record(upload.filename, purpose, upload.content)
        store.add_file(file, upload.content)
        return file

    @router.get("")
    def list_files(
        after: str | None = None,
        limit: int = 10_000,
        order: Literal["asc", "desc"] = "desc",
        purpose: str | None = None,
    ) -> dict:
        check_limit(limit, 10_000)
        files = [file for file in store.files() if purpose is None or file["purpose"] == purpose]
        return cursor_page(files if order == "desc" else files[::-1], after, limit)

    @router.get("/{file_id}")
    def retrieve_file(file_id: str) -> dict:
        return existing_file(file_id)

    @router.get("/{file_id}/content")
    def file_content(file_id: str) -> Response:
        existing_file(file_id)
        return Response(store.file_content(file_id), media_type="application/octet-stream")

    return router
