"""The service's state: files, jobs, events, checkpoints and trained models as files on disk.

Records live in memory and every change is written through at once (atomically, by rename), so
a restarted service finds every file and job where it was. Layout under the state directory::

    files/<file id>.json, files/<file id>.content
    uploads/ (uploads still streaming in; emptied at start)
    jobs/<job id>.json (job and checkpoints), jobs/<job id>.events.jsonl (append-only)
    models/<job id>.json (the trained n-gram counts)
"""

from __future__ import annotations

import copy
import json
import os
import secrets
import string
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from .ngram import NGramModel

TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
_ID_ALPHABET = string.ascii_letters + string.digits


def new_id(prefix: str, length: int = 24) -> str:
    return prefix + "".join(secrets.choice(_ID_ALPHABET) for _ in range(length))


def file_record(filename: str, purpose: str, size: int) -> dict:
    """A new file object of ``size`` bytes, in OpenAI's shape."""
    return {
        "object": "file",
        "id": new_id("file-"),
        "bytes": size,
        "created_at": int(time.time()),
        "filename": filename,
        "purpose": purpose,
        "status": "processed",
        "expires_at": None,
        "status_details": None,
    }


def new_event(message: str, level: str = "info", data: dict | None = None) -> dict:
    """A job event; one with data is a metrics event, as OpenAI's step events are."""
    return {
        "object": "fine_tuning.job.event",
        "id": new_id("ftevent-"),
        "created_at": int(time.time()),
        "level": level,
        "message": message,
        "data": data or {},
        "type": "metrics" if data else "message",
    }


def _write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def _write_json(path: Path, value: object) -> None:
    _write_atomically(path, json.dumps(value).encode())


class Store:
    def __init__(self, state_dir: Path) -> None:
        self.files_dir = state_dir / "files"
        self.jobs_dir = state_dir / "jobs"
        self.models_dir = state_dir / "models"
        self.uploads_dir = state_dir / "uploads"
        for folder in (self.files_dir, self.jobs_dir, self.models_dir, self.uploads_dir):
            folder.mkdir(parents=True, exist_ok=True)
        for unfinished in self.uploads_dir.iterdir():  # cut short by a crash
            unfinished.unlink()
        self._lock = threading.RLock()
        # Insertion order is creation order; lists are served newest first.
        self._files: dict[str, dict] = {}
        self._jobs: dict[str, dict] = {}
        self._checkpoints: dict[str, list[dict]] = {}
        self._events: dict[str, list[dict]] = {}
        self._models: dict[str, NGramModel] = {}
        self._load()

    def _load(self) -> None:
        file_records = [json.loads(path.read_text()) for path in self.files_dir.glob("*.json")]
        for record in sorted(file_records, key=lambda record: record["sequence"]):
            self._files[record["file"]["id"]] = record["file"]
        job_records = [json.loads(path.read_text()) for path in self.jobs_dir.glob("*.json")]
        for record in sorted(job_records, key=lambda record: record["sequence"]):
            job_id = record["job"]["id"]
            self._jobs[job_id] = record["job"]
            self._checkpoints[job_id] = record["checkpoints"]
            self._events[job_id] = self._read_events(job_id)

    def _read_events(self, job_id: str) -> list[dict]:
        path = self.jobs_dir / f"{job_id}.events.jsonl"
        events = []
        for line in path.read_text().splitlines() if path.exists() else []:
            try:
                events.append(json.loads(line))
            except ValueError:
                break  # a line cut short by a crash while it was written
        return events

    # Files

    def add_file(self, file: dict, content: bytes) -> None:
        with self._lock:
            _write_atomically(self.files_dir / f"{file['id']}.content", content)
            _write_json(self.files_dir / f"{file['id']}.json", {"sequence": len(self._files), "file": file})
            self._files[file["id"]] = file

    def add_uploaded_file(self, file: dict, upload: Path) -> None:
        """Adds a file whose content is the file ``upload`` (under ``uploads_dir``), moved in."""
        with self._lock:
            os.replace(upload, self.file_path(file["id"]))
            _write_json(self.files_dir / f"{file['id']}.json", {"sequence": len(self._files), "file": file})
            self._files[file["id"]] = file

    def file(self, file_id: str) -> dict | None:
        with self._lock:
            return copy.deepcopy(self._files.get(file_id))

    def files(self) -> list[dict]:
        with self._lock:
            return copy.deepcopy(list(reversed(self._files.values())))

    def file_path(self, file_id: str) -> Path:
        return self.files_dir / f"{file_id}.content"

    def file_content(self, file_id: str) -> bytes:
        return self.file_path(file_id).read_bytes()

    # Jobs, their events and checkpoints

    def add_job(self, job: dict) -> None:
        with self._lock:
            self._jobs[job["id"]] = copy.deepcopy(job)
            self._checkpoints[job["id"]] = []
            self._events[job["id"]] = []
            self._save_job(job["id"])

    def _save_job(self, job_id: str) -> None:
        sequence = list(self._jobs).index(job_id)
        record = {"sequence": sequence, "job": self._jobs[job_id], "checkpoints": self._checkpoints[job_id]}
        _write_json(self.jobs_dir / f"{job_id}.json", record)

    def job(self, job_id: str) -> dict | None:
        with self._lock:
            return copy.deepcopy(self._jobs.get(job_id))

    def jobs(self) -> list[dict]:
        with self._lock:
            return copy.deepcopy(list(reversed(self._jobs.values())))

    def update_job(
        self, job_id: str, *, events: Sequence[dict] = (), checkpoint: dict | None = None, **changes: object
    ) -> dict | None:
        """Applies the changes and records the events (and checkpoint) at once, unless the job has
        already ended: so a cancel lands between two of the worker's updates, never within one.
        Returns the updated job, or None when it had ended."""
        with self._lock:
            job = self._jobs[job_id]
            if job["status"] in TERMINAL_STATUSES:
                return None
            job.update(copy.deepcopy(changes))
            if checkpoint is not None:
                self._checkpoints[job_id].append(checkpoint)
            self._save_job(job_id)
            if events:
                with open(self.jobs_dir / f"{job_id}.events.jsonl", "a") as events_file:
                    events_file.writelines(json.dumps(event) + "\n" for event in events)
                self._events[job_id].extend(events)
            return copy.deepcopy(job)

    def events(self, job_id: str) -> list[dict]:
        with self._lock:
            return copy.deepcopy(list(reversed(self._events[job_id])))

    def checkpoints(self, job_id: str) -> list[dict]:
        with self._lock:
            return copy.deepcopy(list(reversed(self._checkpoints[job_id])))

    # Trained models, by the job that made them

    def save_model(self, job_id: str, model: NGramModel) -> None:
        _write_json(self.models_dir / f"{job_id}.json", model.to_json())
        with self._lock:
            self._models[job_id] = model

    def model(self, job_id: str) -> NGramModel:
        with self._lock:
            if job_id not in self._models:
                counts = json.loads((self.models_dir / f"{job_id}.json").read_text())
                self._models[job_id] = NGramModel.from_json(counts)
            return self._models[job_id]
