"""The self-hosted trainer's Kubernetes pod: its settings, its body for Pipes, and the one-pod guard.

Dagster runs ``ftp-train`` in a pod of its own image (deploy/trainer.Dockerfile) through
``dagster_k8s.PipesK8sClient``; this module holds what that call needs and nothing of Dagster:

- :class:`TrainerPodSettings`: the image, the namespace and a PodSpec fragment, the latter read
  from the JSON of ``FTP_TRAINER_POD_SPEC`` by :func:`parse_pod_spec` (GPU limits, node selector,
  tolerations, volumes, service account);
- :func:`pod_meta_and_spec`: the ``base_pod_meta`` and ``base_pod_spec`` that
  ``PipesK8sClient.run`` merges with our image, command and the Pipes environment
  (``dagster_k8s.pipes.build_pod_body``). The pod is labelled with the training job's id;
- :func:`clear_live_pods`: Pipes cannot re-attach to a bare pod, so before a new pod starts
  every pod labelled with the same job id is deleted and waited for until it is gone. Two pods
  never train one key, or write one checkpoint folder.

The ``kubernetes`` client is imported only where it is used, so loading the code location does
not import it; nothing here needs a cluster until :func:`clear_live_pods` is called with a real
``CoreV1Api``. docs/kubernetes.md#self-hosted-training.
"""

from __future__ import annotations

import copy
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

JOB_LABEL = "ftp-assets.io/training-job"
POD_LABELS = {"app.kubernetes.io/name": "ftp-trainer", "app.kubernetes.io/part-of": "ftp-assets"}

POD_SPEC_VARIABLE = "FTP_TRAINER_POD_SPEC"
IMAGE_VARIABLE = "FTP_TRAINER_IMAGE"
NAMESPACE_VARIABLE = "FTP_TRAINER_NAMESPACE"

# Where Kubernetes mounts the pod's own namespace (the file dagster-k8s reads as well).
SERVICE_ACCOUNT_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
DEFAULT_NAMESPACE = "default"

# The same user and settings as every pod of the Helm release (helm-values.yaml, the anchors
# &pod_security and &container_security): deploy/trainer.Dockerfile creates user 10001 as well.
TRAINER_UID = 10001
DEFAULT_POD_SECURITY_CONTEXT: dict[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": TRAINER_UID,
    "runAsGroup": TRAINER_UID,
    "fsGroup": TRAINER_UID,
    "seccompProfile": {"type": "RuntimeDefault"},
}
DEFAULT_CONTAINER_SECURITY_CONTEXT: dict[str, Any] = {
    "runAsNonRoot": True,
    "readOnlyRootFilesystem": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
# With a read-only root filesystem the trainer still needs somewhere for temporary files (the
# image points the datasets, Triton and other caches at /tmp): an emptyDir, unless the fragment
# mounts something there itself.
TMP_VOLUME = "ftp-trainer-tmp"
TMP_SIZE_LIMIT = "4Gi"

FINISHED_PHASES = frozenset({"Succeeded", "Failed"})

# A Kubernetes label value: at most 63 characters, alphanumerics at both ends, `-_.` inside.
_LABEL_VALUE = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
# A namespace is a DNS-1123 label.
_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")

# Set by PipesK8sClient.run (image, command) or by pod_meta_and_spec; a fragment must not.
_OURS_IN_CONTAINER = ("image", "command", "args")


class TrainerPodError(Exception):
    """The trainer's pod could not be prepared or cleared; the message is one sentence."""


class TrainerPodSpecError(TrainerPodError, ValueError):
    """FTP_TRAINER_POD_SPEC (or another trainer pod setting) is unusable; one sentence naming it."""


class CoreV1PodApi(Protocol):
    """The calls of ``kubernetes.client.CoreV1Api`` that :func:`clear_live_pods` makes."""

    def list_namespaced_pod(self, namespace: str, *, label_selector: str) -> Any: ...

    def read_namespaced_pod(self, name: str, namespace: str) -> Any: ...

    def delete_namespaced_pod(
        self, name: str, namespace: str, *, grace_period_seconds: int, propagation_policy: str
    ) -> Any: ...


# --- Settings ------------------------------------------------------------------------------------


def _kubernetes_fields(model: str) -> frozenset[str]:
    """The JSON (camelCase) field names of a Kubernetes model, e.g. ``V1PodSpec``."""
    import kubernetes.client

    return frozenset(getattr(kubernetes.client, model).attribute_map.values())


def _spec_error(problem: str) -> TrainerPodSpecError:
    return TrainerPodSpecError(f"{POD_SPEC_VARIABLE} {problem}.")


def parse_pod_spec(raw: str) -> dict[str, Any]:
    """The PodSpec fragment of ``FTP_TRAINER_POD_SPEC``: a JSON object in Kubernetes' own
    (camelCase) field names. Empty means none. Refuses, in one sentence that names the variable
    but never echoes its value: malformed JSON, anything but an object, unknown PodSpec or
    Container fields, init containers, more than one container, a restart policy other than
    Never, and a container ``image``, ``command`` or ``args`` (the image is FTP_TRAINER_IMAGE and
    the command is the trainer's)."""
    if not raw.strip():
        return {}
    try:
        spec = json.loads(raw)
    except json.JSONDecodeError as error:
        # The position only: the value itself may hold a secret.
        raise _spec_error(f"is not valid JSON ({error.msg} at line {error.lineno} column {error.colno})") from None
    if not isinstance(spec, dict):
        raise _spec_error(f"must be a JSON object (a PodSpec fragment), not a JSON {type(spec).__name__}")
    unknown = sorted(set(spec) - _kubernetes_fields("V1PodSpec"))
    if unknown:
        raise _spec_error(f"has fields a PodSpec does not have (Kubernetes' camelCase names): {', '.join(unknown)}")
    if spec.get("initContainers"):
        raise _spec_error("must not have initContainers: PipesK8sClient sets the image and command of a lone container")
    if spec.get("restartPolicy", "Never") != "Never":
        raise _spec_error("must not set a restartPolicy other than Never: a failed attempt is retried by Dagster")
    containers = spec.get("containers", [])
    if not isinstance(containers, list) or not all(isinstance(c, dict) for c in containers):
        raise _spec_error("containers must be a list of objects")
    if len(containers) > 1:
        raise _spec_error(f"has {len(containers)} containers, but the trainer's pod has exactly one")
    if containers:
        container = containers[0]
        unknown = sorted(set(container) - _kubernetes_fields("V1Container"))
        if unknown:
            raise _spec_error(f"containers[0] has fields a Container does not have: {', '.join(unknown)}")
        ours = [key for key in _OURS_IN_CONTAINER if key in container]
        if ours:
            raise _spec_error(
                f"containers[0] must not set {', '.join(ours)}: the image is {IMAGE_VARIABLE} and the command the "
                "trainer's"
            )
    return spec


def resolve_namespace(namespace: str, namespace_file: Path = SERVICE_ACCOUNT_NAMESPACE_FILE) -> str:
    """``namespace`` if given; else the pod's own namespace (the service account's namespace
    file, as PipesK8sClient detects it in the cluster); else ``default``. Pass the result to
    both :func:`clear_live_pods` and ``PipesK8sClient.run(namespace=...)`` so they agree."""
    resolved = namespace.strip()
    if not resolved:
        try:
            resolved = namespace_file.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            resolved = ""
    resolved = resolved or DEFAULT_NAMESPACE
    if not _NAMESPACE.fullmatch(resolved):
        raise TrainerPodSpecError(f"{NAMESPACE_VARIABLE} must be a Kubernetes namespace name, got {resolved!r}.")
    return resolved


@dataclass(frozen=True)
class TrainerPodSettings:
    """Where and how the trainer's pod runs.

    ``namespace`` "" means the namespace the code runs in (see :func:`resolve_namespace`);
    ``pod_spec`` is the fragment :func:`parse_pod_spec` returns.
    """

    image: str
    namespace: str = ""
    pod_spec: dict[str, Any] = field(default_factory=dict)

    def resolved_namespace(self, namespace_file: Path = SERVICE_ACCOUNT_NAMESPACE_FILE) -> str:
        return resolve_namespace(self.namespace, namespace_file)


# --- The pod -------------------------------------------------------------------------------------


def validate_job_id(job_id: str) -> str:
    """``job_id`` if it can be a label value (at most 63 characters, alphanumerics at both ends,
    ``-_.`` between), else ValueError."""
    if not isinstance(job_id, str) or not _LABEL_VALUE.fullmatch(job_id):
        raise ValueError(f"Training job id {job_id!r} is not a valid Kubernetes label value (at most 63 characters).")
    return job_id


def pod_labels(job_id: str) -> dict[str, str]:
    return {JOB_LABEL: validate_job_id(job_id), **POD_LABELS}


def label_selector(job_id: str) -> str:
    return f"{JOB_LABEL}={validate_job_id(job_id)}"


def pod_meta_and_spec(settings: TrainerPodSettings, job_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(base_pod_meta, base_pod_spec)`` for ``PipesK8sClient.run``, which adds the pod's name,
    Dagster's common labels (ours win), the image, the command and the Pipes environment to the
    first container. The fragment is copied, never changed; added where it says nothing:
    ``restartPolicy: Never``, the release's pod and container security contexts, and an
    emptyDir at /tmp."""
    meta: dict[str, Any] = {"labels": pod_labels(job_id)}
    spec = copy.deepcopy(settings.pod_spec)
    spec["restartPolicy"] = "Never"
    spec.setdefault("securityContext", copy.deepcopy(DEFAULT_POD_SECURITY_CONTEXT))
    containers = spec.get("containers") or [{}]
    spec["containers"] = containers
    container = containers[0]
    container.setdefault("securityContext", copy.deepcopy(DEFAULT_CONTAINER_SECURITY_CONTEXT))
    mounts = container.setdefault("volumeMounts", [])
    if not any(mount.get("mountPath", "").rstrip("/") == "/tmp" for mount in mounts):
        mounts.append({"name": TMP_VOLUME, "mountPath": "/tmp"})
        spec.setdefault("volumes", []).append({"name": TMP_VOLUME, "emptyDir": {"sizeLimit": TMP_SIZE_LIMIT}})
    return meta, spec


# --- One pod per key ---------------------------------------------------------------------------


def _api_error(action: str, namespace: str, job_id: str, error: Exception) -> TrainerPodError:
    status = getattr(error, "status", None)
    reason = getattr(error, "reason", None) or type(error).__name__
    answer = f"the Kubernetes API answered {status} {reason}" if status else f"{reason}"
    hint = " (the service account may not manage pods there: see deploy/trainer-rbac.yaml)" if status == 403 else ""
    return TrainerPodError(
        f"Could not {action} the trainer pods of job {job_id} in namespace {namespace}: {answer}{hint}."
    )


def clear_live_pods(
    core_api: CoreV1PodApi,
    namespace: str,
    job_id: str,
    *,
    log: Callable[[str], None],
    timeout_s: float = 600,
    poll_s: float = 2,
    grace_period_s: int = 30,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> list[str]:
    """Delete every pod labelled with ``job_id`` in ``namespace`` and wait until each one that
    had not finished is gone; return the names removed, logging one line per pod.

    A pod whose phase is Succeeded or Failed runs nothing: it is a leftover, deleted without
    waiting. Any other pod (Pending, Running, Unknown, or already terminating) may still be
    training or may start to, so the call returns only once the API no longer has it (404).
    Raises :class:`TrainerPodError`, one sentence naming the namespace and the job, on any API
    error but 404 or when a pod is still there after ``timeout_s``.
    """
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    api_errors = (ApiException, HTTPError)
    selector = label_selector(job_id)
    try:
        pods = core_api.list_namespaced_pod(namespace, label_selector=selector).items or []
    except api_errors as error:
        raise _api_error("list", namespace, job_id, error) from error

    removed: list[str] = []
    waiting: list[str] = []
    for pod in pods:
        name = pod.metadata.name
        phase = pod.status.phase if pod.status is not None else None
        finished = phase in FINISHED_PHASES
        if pod.metadata.deletion_timestamp is not None:
            wait = "" if finished else ": waiting until it is gone"
            log(f"Trainer pod {name} of job {job_id} ({phase or 'no phase'}) is already being deleted{wait}.")
        else:
            try:
                core_api.delete_namespaced_pod(
                    name, namespace, grace_period_seconds=grace_period_s, propagation_policy="Background"
                )
            except ApiException as error:
                if error.status != 404:
                    raise _api_error("delete", namespace, job_id, error) from error
                log(f"Trainer pod {name} of job {job_id} was already gone.")
                removed.append(name)
                continue
            except HTTPError as error:
                raise _api_error("delete", namespace, job_id, error) from error
            if finished:
                log(f"Deleted the finished trainer pod {name} of job {job_id} ({phase}), a leftover.")
            else:
                log(f"Deleting trainer pod {name} of job {job_id} ({phase or 'no phase'}): waiting until it is gone.")
        removed.append(name)
        if not finished:
            waiting.append(name)

    deadline = clock() + timeout_s
    for name in waiting:
        while True:
            try:
                core_api.read_namespaced_pod(name, namespace)
            except ApiException as error:
                if error.status == 404:
                    break
                raise _api_error("wait for", namespace, job_id, error) from error
            except HTTPError as error:
                raise _api_error("wait for", namespace, job_id, error) from error
            if clock() >= deadline:
                raise TrainerPodError(
                    f"Trainer pod {name} of job {job_id} in namespace {namespace} was still there {timeout_s:g} s "
                    "after its deletion, so no new pod was started (a pod on a lost node may need "
                    "`kubectl delete pod --force`)."
                )
            sleep(poll_s)
    return removed
