"""OpenAI's error body and list pages, shared by the routes."""

from __future__ import annotations

from fastapi.responses import JSONResponse


class ApiError(Exception):
    """An error answered in OpenAI's shape: ``{"error": {message, type, param, code}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str = "invalid_request_error",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.headers = status, headers
        self.body = {"error": {"message": message, "type": type, "param": param, "code": code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body, status_code=self.status, headers=self.headers)


def not_found(message: str, param: str, code: str | None = None) -> ApiError:
    return ApiError(404, message, param=param, code=code)


def check_limit(limit: int, maximum: int) -> None:
    if not 1 <= limit <= maximum:
        raise ApiError(400, f"Invalid 'limit': must be between 1 and {maximum}, got {limit}.", param="limit")


def cursor_page(items: list[dict], after: str | None, limit: int) -> dict:
    """One page of a list (already in the order served) after the item with id ``after``."""
    start = 0
    if after is not None:
        ids = [item["id"] for item in items]
        if after not in ids:
            raise ApiError(400, f"Invalid 'after': no item with id {after}.", param="after")
        start = ids.index(after) + 1
    page = items[start : start + limit]
    return {
        "object": "list",
        "data": page,
        "has_more": start + limit < len(items),
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
    }
