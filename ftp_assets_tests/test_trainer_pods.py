"""The trainer's pod (ftp_assets/adapters/trainer_pods.py), without a cluster.

The pod body goes through dagster-k8s' own ``build_pod_body``, as ``PipesK8sClient.run`` builds
it. The one-pod guard talks to a fake ``CoreV1Api`` that answers the three calls it makes the way
the API server does: real ``V1PodList``/``V1Pod`` models filtered by namespace and label selector,
a deletion that marks a running pod terminating and removes it only after some reads, and real
``ApiException`` errors (404 once gone, 403 when forbidden).
"""

from __future__ import annotations

import copy
import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from dagster_k8s.pipes import build_pod_body
from kubernetes.client import V1ObjectMeta, V1Pod, V1PodList, V1PodStatus
from kubernetes.client.exceptions import ApiException

from ftp_assets.adapters.trainer_pods import (
    DEFAULT_CONTAINER_SECURITY_CONTEXT,
    DEFAULT_POD_SECURITY_CONTEXT,
    JOB_LABEL,
    TrainerPodError,
    TrainerPodSettings,
    TrainerPodSpecError,
    clear_live_pods,
    parse_pod_spec,
    pod_meta_and_spec,
    resolve_namespace,
    validate_job_id,
)
from ftp_assets.resources import SelfHostedTraining

JOB = "sft-" + "0123456789abcdef01234567"
OTHER_JOB = "sft-" + "fedcba9876543210fedcba98"
NAMESPACE = "ftp-training"
IMAGE = "registry.example.com/ftp-trainer:1"
COMMAND = ["ftp-train", "--config", "/tmp/config.json"]

FRAGMENT = {
    "serviceAccountName": "ftp-trainer",
    "nodeSelector": {"nvidia.com/gpu.present": "true"},
    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    "volumes": [
        {"name": "model-cache", "persistentVolumeClaim": {"claimName": "ftp-model-cache", "readOnly": True}},
        {"name": "trainer-work", "persistentVolumeClaim": {"claimName": "ftp-trainer-work"}},
    ],
    "containers": [
        {
            "resources": {"limits": {"nvidia.com/gpu": "1", "memory": "32Gi"}},
            "volumeMounts": [
                {"name": "model-cache", "mountPath": "/models", "readOnly": True},
                {"name": "trainer-work", "mountPath": "/var/lib/ftp-trainer"},
            ],
            "env": [{"name": "NCCL_DEBUG", "value": "WARN"}],
        }
    ],
}


def one_sentence(message: str) -> bool:
    return message.endswith(".") and "\n" not in message and ". " not in message


# --- Settings ------------------------------------------------------------------------------------


def test_job_ids_must_be_label_values() -> None:
    assert validate_job_id(JOB) == JOB
    assert validate_job_id("a" * 63)
    for bad in ["", "a" * 64, "-sft", "sft-", "sft 1", "sft/1", "sft:1"]:
        with pytest.raises(ValueError, match="label value"):
            validate_job_id(bad)


def test_parse_pod_spec_accepts_a_fragment_and_nothing() -> None:
    assert parse_pod_spec(json.dumps(FRAGMENT)) == FRAGMENT
    assert parse_pod_spec("") == {}
    assert parse_pod_spec("  \n") == {}


SECRET = "hunter2-not-for-logs"


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ('{"nodeSelector": {"gpu": "' + SECRET + '"}', "not valid JSON"),
        (json.dumps([{"env": SECRET}]), "must be a JSON object"),
        (json.dumps(SECRET), "must be a JSON object"),
        (
            json.dumps({"containers": [{}, {"name": "sidecar", "env": [{"name": "K", "value": SECRET}]}]}),
            "2 containers",
        ),
        (json.dumps({"containers": [{"image": SECRET}]}), "must not set image"),
        (json.dumps({"containers": [{"command": ["sh", "-c", SECRET]}]}), "must not set command"),
        (json.dumps({"containers": [{"args": [SECRET], "image": "x"}]}), "must not set image, args"),
        (json.dumps({"containers": {"name": SECRET}}), "list of objects"),
        (json.dumps({"nodeSelecter": {"gpu": SECRET}}), "nodeSelecter"),
        (json.dumps({"node_selector": {"gpu": SECRET}}), "node_selector"),
        (json.dumps({"containers": [{"volume_mounts": [], "env": [{"value": SECRET}]}]}), "volume_mounts"),
        (json.dumps({"initContainers": [{"name": "fetch", "image": SECRET}]}), "initContainers"),
        (json.dumps({"restartPolicy": "OnFailure", "hostname": SECRET}), "restartPolicy"),
    ],
)
def test_parse_pod_spec_refuses_in_one_sentence_without_echoing(raw: str, problem: str) -> None:
    with pytest.raises(TrainerPodSpecError) as caught:
        parse_pod_spec(raw)
    message = str(caught.value)
    assert message.startswith("FTP_TRAINER_POD_SPEC ")
    assert problem in message
    assert SECRET not in message
    assert one_sentence(message), message


def test_namespace_is_explicit_else_the_pods_own_else_default(tmp_path: Path) -> None:
    namespace_file = tmp_path / "namespace"
    assert resolve_namespace("ftp-training", namespace_file) == "ftp-training"
    assert resolve_namespace("", namespace_file) == "default"  # no file: not in a cluster
    namespace_file.write_text("ftp-assets\n")
    assert resolve_namespace("", namespace_file) == "ftp-assets"
    assert resolve_namespace(" ftp-training ", namespace_file) == "ftp-training"
    assert TrainerPodSettings(image=IMAGE).resolved_namespace(namespace_file) == "ftp-assets"
    namespace_file.write_text("")
    assert resolve_namespace("", namespace_file) == "default"
    with pytest.raises(TrainerPodSpecError, match="FTP_TRAINER_NAMESPACE"):
        resolve_namespace("FTP_Training", namespace_file)


def test_the_resource_builds_the_pod_settings_and_refuses_a_bad_fragment() -> None:
    settings = SelfHostedTraining(image=IMAGE, namespace=NAMESPACE, pod_spec=json.dumps(FRAGMENT)).pod_settings()
    assert settings == TrainerPodSettings(image=IMAGE, namespace=NAMESPACE, pod_spec=FRAGMENT)
    assert SelfHostedTraining(image=IMAGE).pod_settings() == TrainerPodSettings(image=IMAGE)
    with pytest.raises(TrainerPodSpecError, match="FTP_TRAINER_POD_SPEC"):
        SelfHostedTraining(image=IMAGE, pod_spec="[1, 2]").pod_settings()


# --- The pod body, as PipesK8sClient builds it ---------------------------------------------------


def pipes_pod(settings: TrainerPodSettings, job_id: str = JOB) -> V1Pod:
    """The pod PipesK8sClient.run would create from our meta and spec."""
    meta, spec = pod_meta_and_spec(settings, job_id)
    return build_pod_body(
        pod_name="dagster-run-fine-tuned-model-0123456789",
        image=IMAGE,
        command=COMMAND,
        env_vars={"DAGSTER_PIPES_CONTEXT": "ctx", "DAGSTER_PIPES_MESSAGES": "msgs"},
        base_pod_meta=meta,
        base_pod_spec=spec,
    )


def test_build_pod_body_takes_our_meta_and_spec() -> None:
    settings = TrainerPodSettings(image=IMAGE, namespace=NAMESPACE, pod_spec=copy.deepcopy(FRAGMENT))
    pod = pipes_pod(settings)

    labels = pod.metadata.labels
    assert labels[JOB_LABEL] == JOB
    # Dagster's common labels are merged in, ours win where both set one.
    assert labels["app.kubernetes.io/name"] == "ftp-trainer"
    assert labels["app.kubernetes.io/part-of"] == "ftp-assets"
    assert labels["app.kubernetes.io/instance"] == "dagster"

    spec = pod.spec
    assert spec.restart_policy == "Never"
    assert spec.node_selector == {"nvidia.com/gpu.present": "true"}
    assert [(t.key, t.operator, t.effect) for t in spec.tolerations] == [("nvidia.com/gpu", "Exists", "NoSchedule")]
    assert spec.service_account_name == "ftp-trainer"
    (container,) = spec.containers
    assert container.image == IMAGE
    assert container.command == COMMAND
    assert container.args is None
    assert container.resources.limits["nvidia.com/gpu"] == "1"
    mounts = {m.mount_path: (m.name, bool(m.read_only)) for m in container.volume_mounts}
    assert mounts["/models"] == ("model-cache", True)
    assert mounts["/var/lib/ftp-trainer"] == ("trainer-work", False)
    volumes = {v.name: v for v in spec.volumes}
    assert volumes["model-cache"].persistent_volume_claim.claim_name == "ftp-model-cache"
    assert volumes["model-cache"].persistent_volume_claim.read_only is True
    assert volumes["trainer-work"].persistent_volume_claim.claim_name == "ftp-trainer-work"
    # The fragment's env first, then Pipes' bootstrap variables.
    assert [(e.name, e.value) for e in container.env] == [
        ("NCCL_DEBUG", "WARN"),
        ("DAGSTER_PIPES_CONTEXT", "ctx"),
        ("DAGSTER_PIPES_MESSAGES", "msgs"),
    ]
    # No securityContext in the fragment: the release's, and a writable /tmp for the read-only root.
    assert spec.security_context.run_as_non_root is True
    assert spec.security_context.run_as_user == 10001
    assert spec.security_context.fs_group == 10001
    assert spec.security_context.seccomp_profile.type == "RuntimeDefault"
    context = container.security_context
    assert context.allow_privilege_escalation is False
    assert context.capabilities.drop == ["ALL"]
    assert context.read_only_root_filesystem is True
    assert context.run_as_non_root is True
    tmp_name, tmp_read_only = mounts["/tmp"]
    assert not tmp_read_only and volumes[tmp_name].empty_dir is not None
    # The settings' fragment is copied, never changed (PipesK8sClient extends the env list).
    assert settings.pod_spec == FRAGMENT


def test_an_empty_fragment_still_makes_a_locked_down_pod() -> None:
    pod = pipes_pod(TrainerPodSettings(image=IMAGE))
    (container,) = pod.spec.containers
    assert container.image == IMAGE and container.command == COMMAND
    assert pod.spec.restart_policy == "Never"
    assert pod.spec.security_context.run_as_non_root is True
    assert container.security_context.capabilities.drop == ["ALL"]
    assert [m.mount_path for m in container.volume_mounts] == ["/tmp"]


def test_the_fragments_own_security_context_and_tmp_are_kept() -> None:
    fragment: dict[str, Any] = {
        "securityContext": {"runAsNonRoot": True, "runAsUser": 20002},
        "volumes": [{"name": "scratch", "emptyDir": {}}],
        "containers": [
            {
                "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": False},
                "volumeMounts": [{"name": "scratch", "mountPath": "/tmp/"}],
            }
        ],
    }
    meta, spec = pod_meta_and_spec(TrainerPodSettings(image=IMAGE, pod_spec=fragment), JOB)
    assert spec["securityContext"] == fragment["securityContext"]
    assert spec["containers"][0]["securityContext"] == fragment["containers"][0]["securityContext"]
    assert spec["volumes"] == fragment["volumes"]
    assert spec["containers"][0]["volumeMounts"] == fragment["containers"][0]["volumeMounts"]
    assert meta == {
        "labels": {JOB_LABEL: JOB, "app.kubernetes.io/name": "ftp-trainer", "app.kubernetes.io/part-of": "ftp-assets"}
    }
    # The defaults are not shared objects a caller could change.
    assert DEFAULT_POD_SECURITY_CONTEXT["runAsUser"] == 10001
    assert DEFAULT_CONTAINER_SECURITY_CONTEXT["capabilities"] == {"drop": ["ALL"]}


def test_pod_meta_and_spec_refuses_a_bad_job_id() -> None:
    with pytest.raises(ValueError, match="label value"):
        pod_meta_and_spec(TrainerPodSettings(image=IMAGE), "sft_" + "x" * 70)


# --- The one-pod guard ---------------------------------------------------------------------------


def api_error(status: int, reason: str) -> ApiException:
    return ApiException(status=status, reason=reason)


class FakeCoreV1Api:
    """The pod calls of ``kubernetes.client.CoreV1Api`` as the API server answers them.

    A deleted pod whose containers have stopped (Succeeded, Failed) is removed at once. Any other
    is marked terminating (``deletion_timestamp``, as during its grace period) and removed after
    ``reads_until_gone`` reads of it. ``failures`` maps a method name to the ApiException it raises.
    """

    def __init__(self, *, reads_until_gone: int = 2, failures: dict[str, Exception] | None = None) -> None:
        self.pods: dict[tuple[str, str], V1Pod] = {}
        self.reads_until_gone = reads_until_gone
        self.reads_left: dict[tuple[str, str], int] = {}
        self.failures = failures or {}
        self.calls: list[tuple[str, str, dict[str, Any]]] = []

    def add(self, name: str, phase: str | None, *, namespace: str = NAMESPACE, job: str = JOB) -> None:
        labels = {JOB_LABEL: job, "app.kubernetes.io/name": "ftp-trainer"}
        self.pods[(namespace, name)] = V1Pod(
            metadata=V1ObjectMeta(name=name, namespace=namespace, labels=labels),
            status=V1PodStatus(phase=phase),
        )

    def terminate(self, name: str, namespace: str = NAMESPACE) -> None:
        """Someone else already deleted it (e.g. the previous attempt's PipesK8sClient)."""
        self.pods[(namespace, name)].metadata.deletion_timestamp = dt.datetime.now(dt.UTC)
        self.reads_left[(namespace, name)] = self.reads_until_gone

    def _fail(self, method: str) -> None:
        if method in self.failures:
            raise self.failures[method]

    @staticmethod
    def _matches(labels: dict[str, str], selector: str) -> bool:
        for requirement in selector.split(","):
            key, sep, value = requirement.partition("=")
            if not sep or value.startswith("=") or key.endswith("!"):
                raise NotImplementedError(f"selector {requirement!r}")  # we only send key=value
            if labels.get(key.strip()) != value.strip():
                return False
        return True

    def list_namespaced_pod(self, namespace: str, *, label_selector: str = "", **kwargs: Any) -> V1PodList:
        self.calls.append(("list", namespace, {"label_selector": label_selector, **kwargs}))
        self._fail("list_namespaced_pod")
        return V1PodList(
            items=[
                copy.deepcopy(pod)
                for (ns, _), pod in self.pods.items()
                if ns == namespace and (not label_selector or self._matches(pod.metadata.labels, label_selector))
            ]
        )

    def delete_namespaced_pod(
        self, name: str, namespace: str, *, grace_period_seconds: int | None = None, propagation_policy: str = ""
    ) -> V1Pod:
        self.calls.append(
            ("delete", name, {"grace_period_seconds": grace_period_seconds, "propagation_policy": propagation_policy})
        )
        self._fail("delete_namespaced_pod")
        key = (namespace, name)
        if key not in self.pods:
            raise api_error(404, "Not Found")
        pod = self.pods[key]
        if pod.status.phase in ("Succeeded", "Failed"):
            return self.pods.pop(key)
        if pod.metadata.deletion_timestamp is None:
            pod.metadata.deletion_timestamp = dt.datetime.now(dt.UTC)
            pod.metadata.deletion_grace_period_seconds = grace_period_seconds
            self.reads_left[key] = self.reads_until_gone
        return copy.deepcopy(pod)

    def read_namespaced_pod(self, name: str, namespace: str, **kwargs: Any) -> V1Pod:
        self.calls.append(("read", name, kwargs))
        self._fail("read_namespaced_pod")
        key = (namespace, name)
        if key not in self.pods:
            raise api_error(404, "Not Found")
        if key in self.reads_left:
            if self.reads_left[key] == 0:
                del self.pods[key], self.reads_left[key]
                raise api_error(404, "Not Found")
            self.reads_left[key] -= 1
        return copy.deepcopy(self.pods[key])

    def names(self, namespace: str = NAMESPACE) -> set[str]:
        return {name for ns, name in self.pods if ns == namespace}

    def called(self, kind: str) -> list[str]:
        return [name for call, name, _ in self.calls if call == kind]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def fakes(**kwargs: Any) -> tuple[FakeCoreV1Api, FakeClock, list[str]]:
    """The API, the clock its waits run on, and the lines logged."""
    return FakeCoreV1Api(**kwargs), FakeClock(), []


def clear(api: FakeCoreV1Api, clock: FakeClock, lines: list[str], **kwargs: Any) -> list[str]:
    return clear_live_pods(api, NAMESPACE, JOB, log=lines.append, sleep=clock.sleep, clock=clock, **kwargs)


def test_the_fake_answers_like_the_api_server() -> None:
    api = FakeCoreV1Api(reads_until_gone=1)
    api.add("running", "Running")
    api.add("other-job", "Running", job=OTHER_JOB)
    api.add("elsewhere", "Running", namespace="default")
    listed = api.list_namespaced_pod(NAMESPACE, label_selector=f"{JOB_LABEL}={JOB}")
    assert isinstance(listed, V1PodList) and [p.metadata.name for p in listed.items] == ["running"]
    api.delete_namespaced_pod("running", NAMESPACE, grace_period_seconds=30, propagation_policy="Background")
    assert api.read_namespaced_pod("running", NAMESPACE).metadata.deletion_timestamp is not None
    with pytest.raises(ApiException) as gone:
        api.read_namespaced_pod("running", NAMESPACE)
    assert gone.value.status == 404
    with pytest.raises(ApiException) as missing:
        api.delete_namespaced_pod("running", NAMESPACE)
    assert missing.value.status == 404


def test_no_pod_no_deletion() -> None:
    api, clock, lines = fakes()
    api.add("other-job", "Running", job=OTHER_JOB)
    assert clear(api, clock, lines) == []
    assert api.called("delete") == [] and lines == []
    assert api.calls[0] == ("list", NAMESPACE, {"label_selector": f"{JOB_LABEL}={JOB}"})


def test_a_live_pod_is_deleted_and_waited_for_until_gone() -> None:
    api, clock, lines = fakes(reads_until_gone=3)
    api.add("attempt-1", "Running")
    api.add("pending", "Pending")
    api.add("other-job", "Running", job=OTHER_JOB)
    api.add("attempt-1", "Running", namespace="default")  # same name and label, another namespace

    removed = clear(api, clock, lines, poll_s=5, grace_period_s=45)

    assert removed == ["attempt-1", "pending"]
    assert api.names() == {"other-job"}
    assert api.names("default") == {"attempt-1"}
    deletes = [kwargs for call, _, kwargs in api.calls if call == "delete"]
    assert deletes == [{"grace_period_seconds": 45, "propagation_policy": "Background"}] * 2
    # Each pod read until its 404: three reads while terminating, then the one that finds it gone.
    assert api.called("read") == ["attempt-1"] * 4 + ["pending"] * 4
    assert clock.sleeps == [5] * 6
    assert len(lines) == 2
    assert "attempt-1" in lines[0] and "Running" in lines[0] and "waiting" in lines[0]
    assert "pending" in lines[1] and "Pending" in lines[1]


def test_finished_pods_are_deleted_without_waiting() -> None:
    api, clock, lines = fakes()
    api.add("done", "Succeeded")
    api.add("crashed", "Failed")
    assert sorted(clear(api, clock, lines)) == ["crashed", "done"]
    assert api.names() == set()
    assert api.called("read") == [] and clock.sleeps == []
    assert len(lines) == 2 and all("leftover" in line for line in lines)


def test_a_pod_already_terminating_is_waited_for_not_deleted_again() -> None:
    api, clock, lines = fakes(reads_until_gone=2)
    api.add("old", "Running")
    api.terminate("old")
    assert clear(api, clock, lines) == ["old"]
    assert api.called("delete") == []
    assert api.names() == set()
    assert len(lines) == 1 and "already being deleted" in lines[0]


def test_a_pod_gone_between_list_and_delete_counts_as_removed() -> None:
    api, clock, lines = fakes()
    api.add("racing", "Running")
    real_delete = api.delete_namespaced_pod

    def delete_after_someone_else(name: str, namespace: str, **kwargs: Any) -> V1Pod:
        api.pods.pop((namespace, name))
        return real_delete(name, namespace, **kwargs)

    api.delete_namespaced_pod = delete_after_someone_else  # type: ignore[method-assign]
    assert clear(api, clock, lines) == ["racing"]
    assert api.called("read") == []
    assert lines == [f"Trainer pod racing of job {JOB} was already gone."]


def test_a_pod_that_never_goes_is_a_timeout() -> None:
    api, clock, lines = fakes(reads_until_gone=10_000)
    api.add("stuck", "Running")
    with pytest.raises(TrainerPodError) as caught:
        clear(api, clock, lines, timeout_s=60, poll_s=2)
    message = str(caught.value)
    assert NAMESPACE in message and JOB in message and "stuck" in message and "60 s" in message
    assert one_sentence(message), message
    assert sum(clock.sleeps) == 60  # it waited the whole timeout, no more
    assert api.names() == {"stuck"}


@pytest.mark.parametrize(
    ("method", "status", "reason", "action"),
    [
        ("list_namespaced_pod", 403, "Forbidden", "list"),
        ("delete_namespaced_pod", 403, "Forbidden", "delete"),
        ("read_namespaced_pod", 500, "Internal Server Error", "wait for"),
        ("list_namespaced_pod", 401, "Unauthorized", "list"),
    ],
)
def test_api_errors_surface_as_one_sentence(method: str, status: int, reason: str, action: str) -> None:
    api, clock, lines = fakes(failures={method: api_error(status, reason)})
    api.add("attempt-1", "Running")
    with pytest.raises(TrainerPodError) as caught:
        clear(api, clock, lines)
    message = str(caught.value)
    assert message.startswith(f"Could not {action} the trainer pods of job {JOB} in namespace {NAMESPACE}:")
    assert f"{status} {reason}" in message
    assert one_sentence(message), message
    assert ("trainer-rbac.yaml" in message) is (status == 403)
    assert isinstance(caught.value.__cause__, ApiException)


def test_an_unreachable_api_is_one_sentence_too() -> None:
    from urllib3.exceptions import MaxRetryError

    api, clock, lines = fakes()
    api.failures["list_namespaced_pod"] = MaxRetryError(None, "/api/v1/namespaces/ftp-training/pods")  # type: ignore[arg-type]
    with pytest.raises(TrainerPodError) as caught:
        clear(api, clock, lines)
    message = str(caught.value)
    assert "MaxRetryError" in message and NAMESPACE in message and JOB in message
    assert one_sentence(message), message


def test_the_guard_refuses_a_bad_job_id_before_any_call() -> None:
    api = FakeCoreV1Api()
    log: Callable[[str], None] = print
    with pytest.raises(ValueError, match="label value"):
        clear_live_pods(api, NAMESPACE, "sft,other=x", log=log)
    assert api.calls == []


def test_the_real_client_accepts_the_guards_calls() -> None:
    """The real CoreV1Api, cut off below its argument checks (it refuses an unknown keyword)."""
    from kubernetes.client import ApiClient, Configuration, CoreV1Api

    requests: list[tuple[str, str, list[tuple[str, Any]]]] = []

    def call_api(resource_path: str, method: str, path_params: Any, query_params: Any, *_: Any, **__: Any) -> Any:
        path = resource_path.format(**path_params)
        requests.append((method, path, list(query_params or [])))
        if method == "GET" and path.endswith("/pods"):
            pod = V1Pod(metadata=V1ObjectMeta(name="attempt-1"), status=V1PodStatus(phase="Running"))
            return V1PodList(items=[pod])
        if method == "DELETE":
            return V1Pod(metadata=V1ObjectMeta(name="attempt-1"))
        raise api_error(404, "Not Found")

    api = CoreV1Api(ApiClient(Configuration(host="http://127.0.0.1:1")))
    api.api_client.call_api = call_api
    clock, lines = FakeClock(), list[str]()
    assert clear_live_pods(api, NAMESPACE, JOB, log=lines.append, sleep=clock.sleep, clock=clock) == ["attempt-1"]
    assert requests == [
        ("GET", f"/api/v1/namespaces/{NAMESPACE}/pods", [("labelSelector", f"{JOB_LABEL}={JOB}")]),
        (
            "DELETE",
            f"/api/v1/namespaces/{NAMESPACE}/pods/attempt-1",
            [("gracePeriodSeconds", 30), ("propagationPolicy", "Background")],
        ),
        ("GET", f"/api/v1/namespaces/{NAMESPACE}/pods/attempt-1", []),
    ]
