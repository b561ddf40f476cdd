"""The command: bad inputs, a finished destination, work-dir ownership, resume, SIGTERM, Pipes."""

from __future__ import annotations

import fcntl
import json
import signal
import subprocess
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from dagster_pipes import DAGSTER_PIPES_CONTEXT_ENV_VAR, DAGSTER_PIPES_MESSAGES_ENV_VAR, encode_param

from ftp_trainer.cli import main
from ftp_trainer.synthetic import write_jsonl
from ftp_trainer.train import TrainJob
from ftp_trainer_tests.conftest import (
    Files,
    Trained,
    ftp_train_command,
    make_job,
    subprocess_env,
    train,
    train_args,
    write_lines,
)


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # main() sets it; this restores it afterwards


def one_sentence(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    assert lines[0].startswith("ftp-train: ") and lines[0].endswith(".")
    return lines[0]


def with_config(job: TrainJob, config: str | None) -> list[str]:
    """The job's arguments with another --config (or none)."""
    argv = train_args(job)
    at = argv.index("--config")
    del argv[at : at + 2]
    return argv if config is None else [*argv, "--config", config]


def bad_input_cases(files: Files, base: Path, tmp: Path) -> dict[str, tuple[list[str], str]]:
    job = make_job(files, base, tmp, job_id="bad")
    bad_json = write_lines(tmp / "bad.jsonl", [files.train.read_text().splitlines()[0], "{oops"])
    empty = write_lines(tmp / "empty.jsonl", [])
    return {
        "missing training file": (
            train_args(replace(job, training_file=str(tmp / "nope.jsonl"))),
            "does not exist",
        ),
        "bad JSON line": (train_args(replace(job, training_file=str(bad_json))), "Line 2 of"),
        "unknown config key": (with_config(job, '{"epoch": 1}'), "Unknown config key 'epoch'"),
        "rank too high": (with_config(job, '{"lora_rank": 128}'), "above max_serving_rank 64"),
        "config file missing": (
            [*with_config(job, None), "--config-file", str(tmp / "none.json")],
            "Cannot read the config file",
        ),
        "model not found": (
            train_args(replace(job, base_model="nobody/no-such-model")),
            "nobody/no-such-model is neither a local model folder nor in the local Hugging Face cache",
        ),
        "empty training set": (train_args(replace(job, training_file=str(empty))), "has no example to train on"),
        "missing argument": (["train", "--training-file", str(files.train)], "The following arguments are required"),
    }


def test_bad_inputs_exit_2_with_one_sentence(files: Files, tiny_base: Path, tmp_path: Path, capsys) -> None:
    for name, (argv, fragment) in bad_input_cases(files, tiny_base, tmp_path).items():
        assert main(argv) == 2, name
        captured = capsys.readouterr()
        assert fragment in one_sentence(captured.err), (name, captured.err)
        assert captured.out == "", name
    assert not (tmp_path / "out").exists()


def test_a_bad_input_in_a_real_process_exits_2(files: Files, tiny_base: Path, tmp_path: Path) -> None:
    job = make_job(files, tiny_base, tmp_path)
    argv = train_args(replace(job, training_file=str(tmp_path / "missing.jsonl")))
    done = subprocess.run(ftp_train_command(*argv), capture_output=True, text=True, env=subprocess_env(), timeout=120)
    assert done.returncode == 2
    assert "does not exist" in one_sentence(done.stderr)
    assert done.stdout == ""


def test_a_finished_destination_is_reused_without_training(trained: Trained, tmp_path: Path, capsys) -> None:
    before = {p: p.read_bytes() for p in trained.output.rglob("*") if p.is_file()}
    job = replace(trained.job, work_dir=str(tmp_path / "fresh-work"))
    started = time.monotonic()
    assert main(train_args(job)) == 0
    assert time.monotonic() - started < 5
    assert "already trained" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in trained.output.rglob("*") if p.is_file()} == before
    assert not (tmp_path / "fresh-work").exists()  # nothing was started
    # Another job's finished destination is refused, not overwritten.
    assert main(train_args(replace(job, job_id="job-2"))) == 2
    assert "already holds the finished job 'job-1'" in one_sentence(capsys.readouterr().err)


def test_a_work_dir_of_another_job_is_refused(files: Files, tiny_base: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "job.json").write_text('{"job_id": "other"}')
    assert main(train_args(make_job(files, tiny_base, tmp_path))) == 2
    assert "belongs to job 'other', not to job 'job-1'" in one_sentence(capsys.readouterr().err)


def test_a_job_another_process_is_training_is_refused_not_shared(
    files: Files, tiny_base: Path, tmp_path: Path, capsys
) -> None:
    """Two processes on one job would share its checkpoints and replace each other's output."""
    job = make_job(files, tiny_base, tmp_path)
    work = Path(job.work_dir)
    work.mkdir()
    (work / "job.json").write_text('{"job_id": "job-1"}')
    with open(work / ".lock", "w") as held:  # the other process's lock
        fcntl.flock(held, fcntl.LOCK_EX)
        assert main(train_args(job)) == 75
    assert "is being trained by another process" in one_sentence(capsys.readouterr().err)
    assert not Path(job.output_url).exists()


def test_pipes_gets_progress_and_the_result(trained: Trained, tmp_path: Path) -> None:
    """A Pipes process (the env vars Dagster sets): the log lines and the custom message arrive."""
    context = tmp_path / "context.json"
    context.write_text(json.dumps({"asset_keys": ["trained_adapter"], "run_id": "r1", "extras": {}, "retry_number": 0}))
    messages = tmp_path / "messages.jsonl"
    env = subprocess_env()
    env[DAGSTER_PIPES_CONTEXT_ENV_VAR] = encode_param({"path": str(context)})
    env[DAGSTER_PIPES_MESSAGES_ENV_VAR] = encode_param({"path": str(messages)})
    argv = train_args(trained.job)
    done = subprocess.run(ftp_train_command(*argv), capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    sent = [json.loads(line) for line in messages.read_text().splitlines()]
    methods = [message["method"] for message in sent]
    assert methods[0] == "opened" and methods[-1] == "closed"
    logs = [m["params"]["message"] for m in sent if m["method"] == "log"]
    assert any("already trained" in line for line in logs)
    [custom] = [m["params"]["payload"] for m in sent if m["method"] == "report_custom_message"]
    assert custom["manifest"] == trained.result.manifest and custom["reused"] is True
    assert custom["metrics"]["final_eval_loss"] == trained.result.metrics["final_eval_loss"]
    assert done.stdout == ""


def wait_for(predicate, timeout: float, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def start_training(job: TrainJob, **popen: Any) -> subprocess.Popen[str]:
    """``ftp-train train`` for ``job`` in a process of its own, its output in pipes."""
    return subprocess.Popen(
        ftp_train_command(*train_args(job)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=subprocess_env(),
        **popen,
    )


def test_an_interrupted_run_resumes_from_its_last_checkpoint(files: Files, tiny_base: Path, tmp_path: Path) -> None:
    job = make_job(files, tiny_base, tmp_path, epochs=1, batch_size=4, save_steps=10, logging_steps=1)
    process = start_training(job)
    try:
        wait_for(lambda: (Path(job.work_dir) / "checkpoints/checkpoint-10/trainer_state.json").exists(), 120, process)
    finally:
        process.kill()  # a crash: no chance to clean up
        process.communicate()
    assert not (Path(job.output_url) / "manifest.json").exists()

    resumed = train(job)
    [resume_line] = [line for line in resumed.lines if line.startswith("resuming from checkpoint-")]
    step = int(resume_line.rsplit("-", 1)[1])
    assert step >= 10
    first_trained = next(line for line in resumed.lines if "train loss" in line)
    assert first_trained.startswith(f"step {step + 1}/50 ")
    # The loss history of the crashed attempt came back with the checkpoint: no step is missing.
    assert [entry["step"] for entry in resumed.result.metrics["train_loss"]] == list(range(1, 51))
    assert json.loads((resumed.output / "manifest.json").read_text())["job_id"] == "job-1"
    assert sorted(p.name for p in resumed.output.iterdir()) == ["adapter", "manifest.json", "metrics.json"]
    assert len(list(resumed.output.rglob("adapter_model.safetensors"))) == 1


def test_an_unreadable_checkpoint_is_logged_and_training_starts_clean(
    files: Files, tiny_base: Path, tmp_path: Path
) -> None:
    small = write_jsonl(tmp_path / "small.jsonl", 24, seed=5, dialect="house")
    job = replace(make_job(files, tiny_base, tmp_path, epochs=1), training_file=str(small), validation_file=None)
    broken = Path(job.work_dir) / "checkpoints" / "checkpoint-2"
    broken.mkdir(parents=True)
    (Path(job.work_dir) / "job.json").write_text(json.dumps({"job_id": job.job_id}))
    (broken / "trainer_state.json").write_text("{truncated")
    result = train(job)
    assert any(line.startswith("checkpoint checkpoint-2 is unreadable") for line in result.lines)
    assert "starting from the base with a fresh adapter" in result.lines
    assert not any(line.startswith("resuming") for line in result.lines)
    assert result.result.metrics["initial_eval_loss"] is None and result.result.metrics["validation_examples"] == 0
    assert (result.output / "manifest.json").is_file()


def _ignore_termination() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def test_sigterm_stops_training_promptly_and_leaves_no_manifest(files: Files, tiny_base: Path, tmp_path: Path) -> None:
    big = write_jsonl(tmp_path / "big.jsonl", 3000, seed=3, dialect="house")
    job = replace(make_job(files, tiny_base, tmp_path, epochs=3, batch_size=2, logging_steps=1), training_file=str(big))
    # Started with SIGTERM and SIGINT ignored, as a process started in the background may inherit
    # them: the trainer still stops.
    process = start_training(job, preexec_fn=_ignore_termination)
    assert process.stderr is not None
    for line in process.stderr:  # until the first logged step
        if "train loss" in line:
            assert line.startswith("step 1/4500 ")  # 3 epochs of 1,500 steps: minutes of training left
            break
    else:
        pytest.fail(f"no step was logged: {process.communicate()}")
    process.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    try:
        process.communicate(timeout=10)  # draining the pipes, so a full one cannot hold the trainer
    finally:
        process.kill()
        process.communicate()
    assert time.monotonic() - sent < 10
    assert process.returncode == 130
    assert not (Path(job.output_url) / "manifest.json").exists()


def test_a_hub_name_is_loaded_from_the_local_cache_and_its_commit_recorded(
    files: Files, tiny_base: Path, tmp_path: Path
) -> None:
    """A hub model already in the Hugging Face cache (its real layout), offline; nothing is downloaded."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--ftp--tiny-chat"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for path in tiny_base.iterdir():
        (snapshot / path.name).write_bytes(path.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    small = write_jsonl(tmp_path / "small.jsonl", 16, seed=5, dialect="house")
    job = replace(
        make_job(files, tiny_base, tmp_path, epochs=1),
        base_model="ftp/tiny-chat",
        training_file=str(small),
        validation_file=None,
    )
    env = {**subprocess_env(), "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "0"}
    done = subprocess.run(ftp_train_command(*train_args(job)), capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["base_model"] == "ftp/tiny-chat" and manifest["base_model_revision"] == commit
