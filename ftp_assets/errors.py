"""Errors a user can cause and fix; ``ftp-assets`` prints them as one sentence, not a traceback."""

from __future__ import annotations

from dagster import Failure

from ftp_assets.adapters.mlflow_registry import RegistryError
from ftp_assets.adapters.posts_db import PostsDatabaseError
from ftp_assets.settings import SettingsError


class UserError(Exception):
    """A mistake in how a command was called."""


USER_ERRORS: tuple[type[Exception], ...] = (
    PostsDatabaseError,
    RegistryError,
    SettingsError,
    UserError,
    Failure,
)


def is_user_error(error: BaseException) -> bool:
    return isinstance(error, USER_ERRORS)
