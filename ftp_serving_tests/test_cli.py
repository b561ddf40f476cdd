"""ftp-serve's guards, which act before anything is loaded."""

from __future__ import annotations

import pytest

from ftp_serving.cli import is_loopback, main

REQUIRED = ["--base-model", "/nonexistent", "--base-name", "tiny", "--adapters", "/nonexistent"]


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("10.0.0.5", False),
        ("example.org", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_a_public_host_needs_an_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FTP_SERVE_KEY", raising=False)
    with pytest.raises(SystemExit, match="needs an API key"):
        main([*REQUIRED, "--host", "0.0.0.0"])
    with pytest.raises(SystemExit, match="FTP_SERVE_KEY is unset"):
        main([*REQUIRED, "--host", "0.0.0.0", "--api-key-env", "FTP_SERVE_KEY"])


def test_the_key_itself_is_never_echoed(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FTP_SERVE_KEY", "s3cr3t-value")
    with pytest.raises(Exception) as raised:  # the base folder does not exist
        main([*REQUIRED, "--api-key-env", "FTP_SERVE_KEY"])
    captured = capsys.readouterr()
    assert "s3cr3t-value" not in str(raised.value) + captured.out + captured.err
