"""The self-hosted adapters on shared storage, as serving sees them.

The trainer writes each adapter once to ``<adapters root>/<task>/<job id>/`` (``manifest.json``
last); the serving side (ftp_serving: vLLM's resolver plugin, or ``ftp-serve`` on a laptop)
resolves a model name to that folder on first request and checks the adapter's bytes against the
manifest's hash. Retiring an adapter writes ``retired.json`` beside its manifest: serving then
refuses to resolve the name again, while the bytes stay for the registry's record.
"""

from __future__ import annotations

import json
from datetime import datetime

from upath import UPath

RETIRED_MARKER = "retired.json"


def adapter_folder(adapters_root: str, task: str, job_id: str) -> UPath:
    return UPath(adapters_root) / task / job_id


def retire_adapter(adapters_root: str, task: str, job_id: str, *, reason: str, retired_at: datetime) -> bool:
    """Mark the adapter retired; False when it already was (or its folder is gone)."""
    folder = adapter_folder(adapters_root, task, job_id)
    marker = folder / RETIRED_MARKER
    if marker.exists() or not (folder / "manifest.json").exists():
        return False
    marker.write_text(json.dumps({"reason": reason, "retired_at": retired_at.isoformat()}) + "\n")
    return True


def is_retired(adapters_root: str, task: str, job_id: str) -> bool:
    return (adapter_folder(adapters_root, task, job_id) / RETIRED_MARKER).exists()
