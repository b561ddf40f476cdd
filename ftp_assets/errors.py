"""Errors a user can cause and fix; ``ftp`` prints them as one sentence, not a traceback."""

from __future__ import annotations

from ftp_assets.mlflow_registry import RegistryError
from ftp_assets.posts_db import PostsDatabaseError

USER_ERRORS: tuple[type[Exception], ...] = (PostsDatabaseError, RegistryError)


def is_user_error(error: BaseException) -> bool:
    return isinstance(error, USER_ERRORS)
