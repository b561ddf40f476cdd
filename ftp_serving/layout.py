"""From a served model name to a verified adapter folder on this machine.

The trainer publishes ``<root>/<task>/<job_id>/`` with ``adapter/``, ``metrics.json`` and, last,
``manifest.json``; the pipeline retires an adapter by writing ``retired.json`` beside them. An
adapter is served only when its manifest is there, names the same job, records the SHA-256 of
the weights actually on disk and (when asked) the revision of the base it will run on, and it is
not retired. Anything else is :class:`AdapterUnavailable` with one sentence saying why.

A root is a local folder or an fsspec URL (``s3://bucket/adapters``); a remote adapter is copied
to ``cache_dir/<task>/<job_id>/`` first and the copy is verified, so the hash covers the bytes
that are loaded. Standard library only; fsspec is imported for remote roots alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
RETIRED = "retired.json"
ADAPTER = "adapter"
WEIGHTS = "adapter_model.safetensors"

# threads-<task>-<job_id>: ftp_assets.training.self_hosted.served_model_name and job_id_for.
_NAME = re.compile(r"threads-(?P<task>[a-z0-9_]+)-(?P<job_id>sft-[0-9a-f]{24})")
_LOCAL_PROTOCOLS = ("file", "local")


class AdapterUnavailable(Exception):
    """The named adapter must not be served; ``reason`` is one sentence saying why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NotAnAdapterName(AdapterUnavailable, ValueError):
    """The name is not of the form ``threads-<task>-<job_id>``."""


@dataclass(frozen=True)
class ResolvedAdapter:
    name: str
    path: Path  # the local ``adapter/`` folder, ready for PEFT or vLLM
    manifest: dict[str, Any]


def adapter_folder_name(model_name: str) -> str:
    """``"<task>/<job_id>"`` for ``threads-<task>-<job_id>``; :class:`NotAnAdapterName` otherwise."""
    match = _NAME.fullmatch(model_name)
    if match is None:
        raise NotAnAdapterName(
            f"The model {model_name!r} is not a self-hosted adapter's name (threads-<task>-sft-<24 hex digits>)."
        )
    return f"{match['task']}/{match['job_id']}"


def resolve_adapter(
    root: str | os.PathLike[str],
    model_name: str,
    *,
    expected_base_revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> ResolvedAdapter:
    """The verified local adapter of ``model_name`` under ``root``; see the module docstring."""
    relative = adapter_folder_name(model_name)
    root_text = os.fspath(root)
    if _is_remote(root_text):
        cache = Path(cache_dir) if cache_dir is not None else Path(tempfile.gettempdir()) / "ftp-adapters"
        folder = _fetch(root_text, relative, model_name, cache / relative)
    else:
        folder = Path(root_text.removeprefix("file://")) / relative
        retired = _read_local(folder / RETIRED)
        _refuse_unfinished_or_retired(model_name, folder.is_dir(), (folder / MANIFEST).is_file(), retired)
    manifest = _verify(folder, model_name, relative.split("/")[1], expected_base_revision)
    return ResolvedAdapter(name=model_name, path=folder / ADAPTER, manifest=manifest)


def _is_remote(root: str) -> bool:
    protocol, separator, _ = root.partition("://")
    return bool(separator) and protocol not in _LOCAL_PROTOCOLS


def _refuse_unfinished_or_retired(name: str, folder_exists: bool, has_manifest: bool, retired: str | None) -> None:
    """``retired`` is the contents of retired.json, None when there is none."""
    if not folder_exists:
        raise AdapterUnavailable(f"The adapter {name} does not exist: no folder for it under the adapters root.")
    if retired is not None:
        raise AdapterUnavailable(f"The adapter {name} is retired{_retirement(retired)} and is no longer served.")
    if not has_manifest:
        raise AdapterUnavailable(f"The adapter {name} is unfinished: its folder has no {MANIFEST} yet.")


def _retirement(retired: str) -> str:
    """`` (reason, at time)`` from retired.json's contents when readable."""
    try:
        record = json.loads(retired)
        return f" ({record['reason']}, at {record['retired_at']})"
    except (ValueError, TypeError, KeyError):
        return ""


def _read_local(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError:
        return ""  # present but unreadable: still retired


def _fetch(root: str, relative: str, name: str, local: Path) -> Path:
    """Copy the remote adapter folder to ``local`` (manifest last, renamed into place) unless a
    complete copy is already there; the remote retirement is checked every time."""
    import fsspec

    fs, base = fsspec.core.url_to_fs(root)
    remote = f"{base.rstrip('/')}/{relative}"
    fs.invalidate_cache(remote)  # a listing cached before the pipeline wrote retired.json would hide it
    retired = (
        fs.cat_file(f"{remote}/{RETIRED}").decode("utf-8", "replace") if fs.exists(f"{remote}/{RETIRED}") else None
    )
    _refuse_unfinished_or_retired(name, fs.isdir(remote), fs.exists(f"{remote}/{MANIFEST}"), retired)
    if (local / MANIFEST).is_file():
        return local
    local.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{local.name}.", dir=local.parent))
    try:
        fs.get(f"{remote}/{ADAPTER}/", f"{staging / ADAPTER}/", recursive=True)
        fs.get(f"{remote}/{MANIFEST}", str(staging / MANIFEST))
        try:
            os.rename(staging, local)
        except OSError:  # a concurrent resolver renamed its complete copy first
            if not (local / MANIFEST).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return local


def _verify(folder: Path, name: str, job_id: str, expected_base_revision: str | None) -> dict[str, Any]:
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise AdapterUnavailable(f"The adapter {name} has an unreadable {MANIFEST}.") from None
    if not isinstance(manifest, dict):
        raise AdapterUnavailable(f"The adapter {name} has a {MANIFEST} that is no JSON object.")
    if manifest.get("job_id") != job_id:
        raise AdapterUnavailable(
            f"The adapter {name}'s folder holds the manifest of job {manifest.get('job_id')!r}, not of {job_id}."
        )
    weights = folder / ADAPTER / WEIGHTS
    if not weights.is_file():
        raise AdapterUnavailable(f"The adapter {name} has no {ADAPTER}/{WEIGHTS}.")
    actual = sha256_file(weights)
    if actual != manifest.get("adapter_sha256"):
        raise AdapterUnavailable(
            f"The adapter {name}'s {WEIGHTS} does not match its manifest: SHA-256 hash {actual[:12]}… "
            f"instead of {str(manifest.get('adapter_sha256'))[:12]}… (a truncated or altered file)."
        )
    revision = manifest.get("base_model_revision")
    if expected_base_revision is not None and revision != expected_base_revision:
        raise AdapterUnavailable(
            f"The adapter {name} was trained on base revision {str(revision)[:12]}…, "
            f"not on the served base's {expected_base_revision[:12]}…."
        )
    return manifest


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
