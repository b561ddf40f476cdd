"""The self-hosted provider: the LoRA trainer (``ftp-train``, a program of its own) run to the end
through Dagster Pipes, as a subprocess here and as a Kubernetes pod in production.

It plugs into :func:`ftp_assets.steps.fine_tune.fine_tune` as a :class:`~ftp_assets.steps.fine_tune.Trainer`
rather than as a polling :class:`~ftp_assets.adapters.providers.base.FineTuningProvider`: a Pipes
client blocks until the trainer exits and streams its log lines meanwhile, so there is nothing to
poll, and a polling interface would need a second process to watch. What both paths share is the
request's idempotency key, the durable job record and everything after the result (the MLflow
run, the registry version). The job id is derived from the key, so the finished adapter's folder
is known before training starts: a re-run that finds its manifest reuses it and trains nothing.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dagster import AssetExecutionContext, PipesSubprocessClient
from dagster._core.errors import DagsterPipesExecutionError
from upath import UPath

from ftp_assets.adapters.fine_tuning_jobs import FineTuningJobStore
from ftp_assets.adapters.providers.base import FineTuneRequest, FineTuneResult, FineTuningFailed, StepMetrics
from ftp_assets.adapters.served_adapters import adapter_folder
from ftp_assets.adapters.trainer_pods import TrainerPodError
from ftp_assets.home import home_path
from ftp_assets.resources import DatasetStorage, SelfHostedTraining
from ftp_assets.steps.data_path import TrainingDataset

PROVIDER_NAME = "self_hosted"
MANIFEST = "manifest.json"
METRICS = "metrics.json"
# Where the trainer pod keeps checkpoints when FTP_TRAINER_WORK_DIR is unset: its work volume.
POD_WORK_DIR = "/var/lib/ftp-trainer"
# A SIGINT first, then this long for the trainer to stop before Dagster gives up on it.
TERMINATION_TIMEOUT_S = 30


def job_id_for(request: FineTuneRequest) -> str:
    """The job's id from its key: also a valid Kubernetes label value and folder name."""
    return f"sft-{request.idempotency_key[:24]}"


@dataclass(frozen=True)
class SelfHostedTrainer:
    """Runs one request with the self-hosted trainer; see the module's docstring.

    ``dataset`` has this pod's local file paths (the subprocess reads them); ``shared_folder`` is
    where ``training_jsonl`` published them (the trainer pod reads them there)."""

    context: AssetExecutionContext
    settings: SelfHostedTraining
    dataset: TrainingDataset
    shared_folder: str
    jobs: FineTuningJobStore
    # Where a remote adapter is fetched to for the MLflow run (this run's working folder).
    storage: DatasetStorage
    # How long a trainer pod may run (the step's timeout_hours); a local subprocess runs to its end.
    timeout_s: float = 86_400

    @property
    def name(self) -> str:
        return PROVIDER_NAME

    def train(self, request: FineTuneRequest, *, estimated_cost_usd: float) -> FineTuneResult:
        job_id = job_id_for(request)
        destination = adapter_folder(self.settings.adapters_root(), request.task, job_id)
        log = self.context.log.info
        finished = _finished(destination, job_id)
        if finished is not None:
            log(
                f"Adapter {job_id} for task {request.task}, dataset {request.dataset_hash} was trained by an "
                f"earlier run ({destination}): reusing it, nothing is trained."
            )
            if self.jobs.get(request.idempotency_key) is None:
                self.jobs.record_created(request, PROVIDER_NAME, job_id)
        else:
            # The id is known before the trainer starts, so the record never holds a bare intent.
            self.jobs.record_created(request, PROVIDER_NAME, job_id)
            log(
                f"Training adapter {job_id} for task {request.task} on {request.base_model} ({self.settings.launcher})."
            )
            self._launch(request, job_id, destination)
            finished = _finished(destination, job_id)
            if finished is None:
                raise FineTuningFailed(
                    code="no_manifest",
                    message=f"the trainer exited cleanly but left no {MANIFEST} in {destination}",
                    job_id=job_id,
                )
        manifest, metrics = finished
        return _result(
            request,
            job_id,
            manifest,
            metrics,
            artifacts_dir=self._local_copy(destination, job_id),
            gpu_hour_usd=self.settings.gpu_hour_usd,
        )

    def _arguments(self, request: FineTuneRequest, job_id: str, destination: UPath, *, in_pod: bool) -> list[str]:
        dataset = self.dataset
        if in_pod:
            # The pod reads the files training_jsonl published to shared storage.
            if not self.shared_folder:
                raise FineTuningFailed(
                    code="no_shared_storage",
                    message="the trainer pod reads the training files from shared storage: set FTP_STORAGE_URL",
                    job_id=job_id,
                )
            shared = self.shared_folder.rstrip("/")
            training = f"{shared}/{Path(dataset.training_path).name}"
            validation = dataset.validation_path and f"{shared}/{Path(dataset.validation_path).name}"
            work_root = self.settings.work_dir or POD_WORK_DIR
        else:
            training, validation = dataset.training_path, dataset.validation_path
            work_root = self.settings.work_dir or str(home_path("training"))
        config = {**self.settings.hyperparameters(), "threads": self.settings.threads}
        arguments = [
            "train",
            "--training-file",
            training,
            *(["--validation-file", validation] if validation else []),
            "--base-model",
            self.settings.base_model_location(),
            "--output-url",
            str(destination),
            "--work-dir",
            f"{work_root.rstrip('/')}/{request.task}/{job_id}",
            "--job-id",
            job_id,
            "--dataset-hash",
            request.dataset_hash,
            "--config",
            json.dumps(config, sort_keys=True),
        ]
        if self.settings.builds_tiny_base:
            arguments.append("--build-tiny-base")
        return arguments

    def _launch(self, request: FineTuneRequest, job_id: str, destination: UPath) -> None:
        try:
            if self.settings.launcher == "kubernetes":
                self._launch_pod(request, job_id, destination)
            else:
                self._launch_subprocess(request, job_id, destination)
        except DagsterPipesExecutionError as error:
            raise FineTuningFailed(
                code="trainer_failed",
                message=f"{error}; the trainer's reason is its last ERROR line in this run's log",
                job_id=job_id,
            ) from None
        except TrainerPodError as error:
            raise FineTuningFailed(code="trainer_pod", message=str(error), job_id=job_id) from None

    def _launch_subprocess(self, request: FineTuneRequest, job_id: str, destination: UPath) -> None:
        missing = self.settings.missing_local_modules()
        if missing:
            raise FineTuningFailed(
                code="trainer_not_installed",
                message=f"FTP_PROVIDER=self_hosted runs the trainer here, and {', '.join(missing)} is not installed: "
                "run `pip install -e '.[train]'` in the project's folder",
                job_id=job_id,
            )
        client = PipesSubprocessClient(forward_termination=True, termination_timeout_seconds=TERMINATION_TIMEOUT_S)
        client.run(
            context=self.context,
            command=[sys.executable, "-m", "ftp_trainer", *self._arguments(request, job_id, destination, in_pod=False)],
            env=_TRAINER_ENV,
        )

    def _launch_pod(self, request: FineTuneRequest, job_id: str, destination: UPath) -> None:
        # Imported here: only the production profile's pods need the Kubernetes client.
        from dagster_k8s import PipesK8sClient
        from kubernetes import client as k8s_client
        from kubernetes import config as k8s_config

        from ftp_assets.adapters.trainer_pods import clear_live_pods, pod_meta_and_spec

        pod = self.settings.pod_settings()
        try:
            k8s_config.load_incluster_config()
        except k8s_config.ConfigException:
            k8s_config.load_kube_config()
        namespace = pod.resolved_namespace()
        # Pipes cannot re-attach to a pod an earlier attempt started: remove it (its checkpoints
        # stay on the work volume, and the new pod resumes from them), never two pods per key.
        clear_live_pods(k8s_client.CoreV1Api(), namespace, job_id, log=self.context.log.info)
        meta, spec = pod_meta_and_spec(pod, job_id)
        PipesK8sClient().run(
            context=self.context,
            image=pod.image,
            command=["ftp-train", *self._arguments(request, job_id, destination, in_pod=True)],
            namespace=namespace,
            env=_TRAINER_ENV,
            base_pod_meta=meta,
            base_pod_spec=spec,
            pod_wait_timeout=self.timeout_s,
        )

    def _local_copy(self, destination: UPath, job_id: str) -> Path:
        """The finished folder on this machine, for the MLflow run: itself when local."""
        if destination.protocol in ("", "file", "local"):
            return Path(destination.path)
        local = self.storage.folder(self.dataset.task, self.context.run.run_id) / job_id
        if not (local / MANIFEST).exists():
            destination.fs.get(destination.path.rstrip("/") + "/", str(local) + "/", recursive=True)
        return local


# Nothing is downloaded at run time: the base model is a folder or already in the local cache.
_TRAINER_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def _finished(destination: UPath, job_id: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The manifest and metrics of the adapter finished at ``destination``; None when it is not
    there (the manifest is the trainer's last write) or belongs to another job."""
    manifest_path = destination / MANIFEST
    if not manifest_path.exists():
        return None
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("job_id") != job_id:
        raise FineTuningFailed(
            code="foreign_adapter",
            message=f"{destination} holds the adapter of job {manifest.get('job_id')!r}, not of {job_id}",
            job_id=job_id,
        )
    return manifest, json.loads((destination / METRICS).read_text())


def _result(
    request: FineTuneRequest,
    job_id: str,
    manifest: dict[str, Any],
    metrics: dict[str, Any],
    *,
    artifacts_dir: Path,
    gpu_hour_usd: float,
) -> FineTuneResult:
    steps: dict[int, dict[str, float | None]] = {}
    for point in metrics.get("train_loss", []):
        steps.setdefault(int(point["step"]), {})["train_loss"] = float(point["loss"])
    for point in metrics.get("eval_loss", []):
        steps.setdefault(int(point["step"]), {})["valid_loss"] = float(point["loss"])
    duration_s = float(metrics.get("duration_s") or 0.0)
    return FineTuneResult(
        model_id=served_model_name(request.task, job_id),
        job_id=job_id,
        training_file_id=f"sha256:{manifest.get('training_file_sha256', 'unknown')}",
        trained_tokens=metrics.get("trained_tokens"),
        step_metrics=tuple(
            StepMetrics(step=step, train_loss=values.get("train_loss"), valid_loss=values.get("valid_loss"))
            for step, values in sorted(steps.items())
        ),
        final_train_loss=metrics.get("final_train_loss"),
        final_valid_loss=metrics.get("final_eval_loss"),
        duration_s=duration_s,
        hyperparameters={**manifest.get("hyperparameters", {}), "n_epochs": request.n_epochs},
        artifacts_dir=artifacts_dir,
        cost_usd=duration_s / 3600 * gpu_hour_usd,
        registry_tags={
            "base_model_revision": str(manifest.get("base_model_revision", "unknown")),
            "adapter_sha256": str(manifest.get("adapter_sha256", "unknown")),
            "lora_rank": str(manifest.get("lora_rank", "unknown")),
            "initial_valid_loss": str(metrics.get("initial_eval_loss")),
        },
    )


def served_model_name(task: str, job_id: str) -> str:
    """The name the agent will call the adapter by (the registry's and experiments' model id)."""
    return f"threads-{task}-{job_id}"
