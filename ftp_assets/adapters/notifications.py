"""The failure notification webhook (FTP_ALERT_WEBHOOK_URL): one JSON POST per notice.

The webhook's URL holds its token (a Slack incoming webhook's path is the credential), so no
error raised here quotes it: a failure names the variable, and the status or the kind of error.
httpx logs each request's URL at INFO; while a notice is posted, that log line names the variable
instead.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Mapping
from typing import Any

import httpx2

WEBHOOK_VARIABLE = "FTP_ALERT_WEBHOOK_URL"
WEBHOOK = f"the failure notification webhook ({WEBHOOK_VARIABLE})"
DEFAULT_TIMEOUT_S = 10.0


class NotificationError(RuntimeError):
    """The webhook did not take the notification; the message never contains its URL."""


class _HiddenUrls(logging.Filter):
    """Replaces, in httpx's log records, the URLs being posted to with the variable's name."""

    def __init__(self) -> None:
        super().__init__()
        # Each URL with the number of posts to it under way (threads may post at once).
        self._urls: Counter[str] = Counter()
        self._lock = threading.Lock()

    def hide(self, url: str) -> None:
        with self._lock:
            self._urls[url] += 1

    def show(self, url: str) -> None:
        with self._lock:
            self._urls[url] -= 1
            if self._urls[url] <= 0:
                del self._urls[url]

    def filter(self, record: logging.LogRecord) -> bool:
        if self._urls and isinstance(record.args, tuple):
            urls = set(self._urls)
            record.args = tuple(f"<{WEBHOOK_VARIABLE}>" if str(arg) in urls else arg for arg in record.args)
        return True


_hidden = _HiddenUrls()
logging.getLogger("httpx2").addFilter(_hidden)


def post_notification(url: str, payload: Mapping[str, Any], *, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    """POSTs ``payload`` as JSON to ``url``; a :class:`NotificationError` unless it answers 2xx.
    Redirects are not followed (a webhook that redirects is misconfigured)."""
    try:
        # As httpx writes it in its log (normalized), and as given.
        shown = {url, str(httpx2.URL(url))}
    except (httpx2.InvalidURL, TypeError):
        raise NotificationError(f"{WEBHOOK} is not a valid URL") from None
    for each in shown:
        _hidden.hide(each)
    try:
        response = httpx2.post(url, json=dict(payload), timeout=timeout_s, follow_redirects=False)
    except (httpx2.HTTPError, httpx2.InvalidURL) as error:
        # httpx's messages may quote the URL: only the kind of error is kept, and no chained cause.
        raise NotificationError(f"{WEBHOOK} did not answer: {type(error).__name__}") from None
    finally:
        for each in shown:
            _hidden.show(each)
    if not response.is_success:
        # The status alone: a receiver's body or reason phrase may echo the request.
        raise NotificationError(f"{WEBHOOK} answered {response.status_code}") from None
