"""resolve_adapter on real trained adapters: each reason to refuse one, locally and on S3 (moto)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from ftp_assets_tests.fixtures.s3 import moto_bucket
from ftp_serving.layout import AdapterUnavailable, NotAnAdapterName, adapter_folder_name, resolve_adapter
from ftp_serving_tests.conftest import (
    Adapters,
    clone_adapter,
    folder_of,
    new_job_id,
    retire,
    served_name,
    truncate_weights,
)


def test_a_name_maps_to_its_task_and_job_folder() -> None:
    job_id = "sft-0123456789abcdef01234567"
    assert adapter_folder_name(f"threads-hook-{job_id}") == f"hook/{job_id}"
    assert adapter_folder_name(f"threads-long_task2-{job_id}") == f"long_task2/{job_id}"


@pytest.mark.parametrize(
    "name",
    [
        "gpt-4o-mini",
        "threads-hook-sft-0123",  # too short a job id
        "threads-Hook-sft-0123456789abcdef01234567",  # tasks are lowercase
        "threads-hook-sft-0123456789ABCDEF01234567",
        "threads-../etc-sft-0123456789abcdef01234567",
        "threads-hook-sft-0123456789abcdef01234567/..",
    ],
)
def test_a_name_that_is_not_ours_is_refused(name: str, tmp_path: Path) -> None:
    with pytest.raises(NotAnAdapterName, match="not a self-hosted adapter's name"):
        adapter_folder_name(name)
    with pytest.raises(AdapterUnavailable):
        resolve_adapter(tmp_path, name)


def test_a_finished_adapter_resolves_to_its_adapter_folder(adapters: Adapters) -> None:
    resolved = resolve_adapter(adapters.root, adapters.hook)
    assert resolved.name == adapters.hook
    assert resolved.path == folder_of(adapters.root, adapters.hook) / "adapter"
    assert (resolved.path / "adapter_config.json").is_file()
    assert resolved.manifest["job_id"] == adapters.hook.split("-", 2)[2]


def test_the_base_revision_is_checked_when_given(adapters: Adapters) -> None:
    revision = resolve_adapter(adapters.root, adapters.hook).manifest["base_model_revision"]
    assert resolve_adapter(adapters.root, adapters.hook, expected_base_revision=revision).manifest
    with pytest.raises(AdapterUnavailable, match="trained on base revision"):
        resolve_adapter(adapters.root, adapters.hook, expected_base_revision="0" * 64)


def test_a_missing_folder_is_refused(adapters: Adapters) -> None:
    with pytest.raises(AdapterUnavailable, match="does not exist"):
        resolve_adapter(adapters.root, served_name("hook", new_job_id()))


def test_an_unfinished_adapter_is_refused(adapters: Adapters) -> None:
    name = clone_adapter(adapters, adapters.hook)
    (folder_of(adapters.root, name) / "manifest.json").unlink()
    with pytest.raises(AdapterUnavailable, match="unfinished"):
        resolve_adapter(adapters.root, name)


def test_a_retired_adapter_is_refused_with_the_reason(adapters: Adapters) -> None:
    name = clone_adapter(adapters, adapters.hook)
    retire(adapters.root, name, reason="lost the experiment")
    with pytest.raises(AdapterUnavailable, match=r"retired \(lost the experiment"):
        resolve_adapter(adapters.root, name)


def test_truncated_weights_are_refused_by_their_hash(adapters: Adapters) -> None:
    name = clone_adapter(adapters, adapters.hook)
    truncate_weights(adapters.root, name)
    with pytest.raises(AdapterUnavailable, match="SHA-256 hash"):
        resolve_adapter(adapters.root, name)


def test_a_manifest_of_another_job_is_refused(adapters: Adapters) -> None:
    name = served_name("hook", new_job_id())
    shutil.copytree(folder_of(adapters.root, adapters.hook), folder_of(adapters.root, name))
    with pytest.raises(AdapterUnavailable, match="holds the manifest of job"):
        resolve_adapter(adapters.root, name)


def test_an_unreadable_manifest_is_refused(adapters: Adapters) -> None:
    name = clone_adapter(adapters, adapters.hook)
    (folder_of(adapters.root, name) / "manifest.json").write_text("{not json")
    with pytest.raises(AdapterUnavailable, match="unreadable"):
        resolve_adapter(adapters.root, name)


# --- a remote root: moto's S3 server ---------------------------------------------------------


@pytest.fixture
def s3_bucket(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    with moto_bucket(monkeypatch, "ftp-adapters") as bucket:
        yield bucket


def _upload(folder: Path, url: str) -> None:
    import fsspec

    fs, root = fsspec.core.url_to_fs(url)
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            fs.put_file(str(path), f"{root}/{path.relative_to(folder).as_posix()}")


def test_a_remote_adapter_is_copied_to_the_cache_and_verified_there(
    adapters: Adapters, s3_bucket: str, tmp_path: Path
) -> None:
    remote_root = f"s3://{s3_bucket}/adapters"
    task, job_id = adapter_folder_name(adapters.hook).split("/")
    _upload(folder_of(adapters.root, adapters.hook), f"{remote_root}/{task}/{job_id}")
    cache = tmp_path / "cache"

    resolved = resolve_adapter(remote_root, adapters.hook, cache_dir=cache)

    assert resolved.path == cache / task / job_id / "adapter"
    assert (resolved.path / "adapter_model.safetensors").read_bytes() == (
        folder_of(adapters.root, adapters.hook) / "adapter" / "adapter_model.safetensors"
    ).read_bytes()
    # The copy is what is verified: damaged here, it is refused though the remote is intact.
    truncate_weights(cache, adapters.hook)
    with pytest.raises(AdapterUnavailable, match="SHA-256 hash"):
        resolve_adapter(remote_root, adapters.hook, cache_dir=cache)


def test_a_remote_retirement_or_absence_is_seen(adapters: Adapters, s3_bucket: str, tmp_path: Path) -> None:
    import fsspec

    remote_root = f"s3://{s3_bucket}/adapters"
    relative = adapter_folder_name(adapters.hook)
    _upload(folder_of(adapters.root, adapters.hook), f"{remote_root}/{relative}")
    assert resolve_adapter(remote_root, adapters.hook, cache_dir=tmp_path).path.is_dir()
    record = {"reason": "rolled back", "retired_at": "2026-11-27T12:00:00+00:00"}
    with fsspec.open(f"{remote_root}/{relative}/retired.json", "w") as handle:
        handle.write(json.dumps(record))
    with pytest.raises(AdapterUnavailable, match=r"retired \(rolled back"):
        resolve_adapter(remote_root, adapters.hook, cache_dir=tmp_path)
    with pytest.raises(AdapterUnavailable, match="does not exist"):
        resolve_adapter(remote_root, adapters.body, cache_dir=tmp_path)
