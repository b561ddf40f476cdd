"""``/v1/files``: upload, list, retrieve and read files."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse

from .multipart import Form, FormError, UploadTooLarge, read_form
from .responses import ApiError, check_limit, cursor_page, not_found
from .store import Store, file_record

UPLOAD_PURPOSES = frozenset({"assistants", "batch", "fine-tune", "vision", "user_data"})


def _too_large(max_upload_bytes: int) -> ApiError:
    return ApiError(413, f"File too large: this service takes uploads of up to {max_upload_bytes} bytes.", param="file")


def files_router(store: Store, max_upload_bytes: int) -> APIRouter:
    router = APIRouter(prefix="/v1/files")

    def existing_file(file_id: str) -> dict:
        file = store.file(file_id)
        if file is None:
            raise not_found(f"No such File object: {file_id}", param="id")
        return file

    def add_upload(form: Form) -> dict:
        unknown = sorted(form.names() - {"file", "purpose"})
        if unknown:
            raise ApiError(400, f"Unrecognized request argument supplied: {unknown[0]}", param=unknown[0])
        upload, purpose = form.files.get("file"), form.fields.get("purpose")
        if upload is None:
            raise ApiError(400, "Missing required parameter: 'file'.", param="file")
        if purpose is None:
            raise ApiError(400, "Missing required parameter: 'purpose'.", param="purpose")
        if purpose not in UPLOAD_PURPOSES:
            raise ApiError(400, f"Invalid value for 'purpose': {purpose!r}.", param="purpose")
        if purpose == "fine-tune" and not upload.filename.endswith(".jsonl"):
            raise ApiError(400, "Invalid file format for Fine-Tuning API. Must be .jsonl", param="file")
        file = file_record(upload.filename, purpose, upload.size)
        store.add_uploaded_file(file, upload.path)
        return file

    @router.post("")
    async def upload_file(request: Request) -> dict:
        declared_size = request.headers.get("content-length", "")
        if declared_size.isdigit() and int(declared_size) > max_upload_bytes:
            raise _too_large(max_upload_bytes)  # before reading any of it
        content_type = request.headers.get("content-type", "")
        try:
            async with read_form(content_type, request.stream(), store.uploads_dir, max_upload_bytes) as form:
                return add_upload(form)
        except FormError as error:
            raise ApiError(400, f"Invalid multipart/form-data body: {error}.") from None
        except UploadTooLarge:
            raise _too_large(max_upload_bytes) from None

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
    def file_content(file_id: str) -> FileResponse:
        existing_file(file_id)
        return FileResponse(store.file_path(file_id), media_type="application/octet-stream")

    return router
