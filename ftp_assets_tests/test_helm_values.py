"""helm-values.yaml is valid for Dagster's Helm chart and says what we mean.

Validated as Helm does before rendering: the chart's defaults coalesced with our values (maps
merge recursively, lists and scalars replace, null deletes), the user-deployments subchart's
defaults coalesced under `dagster-user-deployments` with the parent's globals, then each chart's
values checked against its own JSON schema (Draft 7). The schemas' Kubernetes `$ref`s point at a
remote file that cannot be fetched here; they resolve to permissive `{}`, so Kubernetes-typed
fields are checked by the project-specific tests below rather than by the schema.
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import jsonschema
import pytest
import yaml
from dagster_k8s.container_context import K8sContainerContext
from dagster_k8s.job import DagsterK8sJobConfig, UserDefinedDagsterK8sConfig, construct_dagster_k8s_job
from dagster_k8s.pipes import build_pod_body
from referencing import Registry, Resource
from referencing.exceptions import NoSuchResource
from referencing.jsonschema import DRAFT7

from ftp_assets.adapters.trainer_pods import (
    JOB_LABEL,
    TRAINER_UID,
    parse_pod_spec,
    pod_meta_and_spec,
    resolve_namespace,
)
from ftp_assets.definitions import self_hosted_training
from ftp_assets.settings import DeploymentSettings, SettingsError

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "deploy" / "helm-chart"
VALUES_FILE = ROOT / "helm-values.yaml"
DOCS_FILE = ROOT / "docs" / "kubernetes.md"
SUBCHART = "dagster-user-deployments"
KUBERNETES_DEFINITIONS = "https://kubernetesjsonschema.dev/v1.18.0/_definitions.json"
QUEUE = "dagsterDaemon.runCoordinator.config.queuedRunCoordinator"
FINE_TUNE_TAG = "ftp/fine-tune-task"
SECRET_NAME = re.compile(r"KEY|PASSWORD|TOKEN|SECRET|CREDENTIAL", re.IGNORECASE)
# Keys of chart values that would hold a secret (not `...SecretName`, which names a Secret).
SECRET_VALUE_KEY = re.compile(r"password|token|api_?key", re.IGNORECASE)
URL_WITH_CREDENTIALS = re.compile(r"://[^/@\s:]+:[^/@\s]+@")


# --- Helm's coalescing ---------------------------------------------------------------------------


def coalesce(values: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """Helm's value coalescing: `values` wins; maps merge, anything else replaces; null deletes."""
    merged = copy.deepcopy(defaults)
    for key, value in values.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = coalesce(value, merged[key])
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def load_yaml(path: Path) -> dict[str, Any]:
    with path.open() as f:
        return yaml.safe_load(f)


def coalesce_chart(values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The parent chart's values and the subchart's, as Helm hands them to validation."""
    parent = coalesce(values, load_yaml(CHART / "values.yaml"))
    subchart = coalesce(parent.get(SUBCHART, {}), load_yaml(CHART / "user-deployments.values.yaml"))
    # Parent globals override the subchart's own.
    subchart["global"] = coalesce(parent.get("global", {}), subchart.get("global", {}))
    parent[SUBCHART] = subchart
    return parent, subchart


# --- Schema validation ---------------------------------------------------------------------------


def _remote_refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(KUBERNETES_DEFINITIONS):
            yield ref
        for child in node.values():
            yield from _remote_refs(child)
    elif isinstance(node, list):
        for child in node:
            yield from _remote_refs(child)


def _permissive_kubernetes_definitions(schemas: list[dict[str, Any]]) -> dict[str, Any]:
    """A stand-in for the Kubernetes definitions file: `{}` at every pointer the schemas use."""
    document: dict[str, Any] = {}
    for schema in schemas:
        for ref in _remote_refs(schema):
            node = document
            for part in ref.partition("#/")[2].split("/"):
                node = node.setdefault(part, {})
    return document


def validator_for(schema: dict[str, Any], all_schemas: list[dict[str, Any]]) -> jsonschema.Draft7Validator:
    stand_in = Resource.from_contents(_permissive_kubernetes_definitions(all_schemas), default_specification=DRAFT7)

    def retrieve(uri: str) -> Resource:
        if uri == KUBERNETES_DEFINITIONS:
            return stand_in
        raise NoSuchResource(ref=uri)  # any other remote reference is a real problem

    return jsonschema.Draft7Validator(schema, registry=Registry(retrieve=retrieve))


def validate_as_helm(values: dict[str, Any]) -> None:
    """Raise jsonschema.ValidationError if Helm would reject these values."""
    parent_schema = json.loads((CHART / "values.schema.json").read_text())
    subchart_schema = json.loads((CHART / "user-deployments.values.schema.json").read_text())
    schemas = [parent_schema, subchart_schema]
    parent, subchart = coalesce_chart(values)
    for schema, instance in ((parent_schema, parent), (subchart_schema, subchart)):
        errors = validator_for(schema, schemas).iter_errors(instance)
        error = jsonschema.exceptions.best_match(errors)
        if error is not None:
            raise error


@pytest.fixture
def values() -> dict[str, Any]:
    return load_yaml(VALUES_FILE)


@pytest.fixture
def merged(values: dict[str, Any]) -> dict[str, Any]:
    return coalesce_chart(values)[0]


def _deployment(merged: dict[str, Any]) -> dict[str, Any]:
    (deployment,) = [d for d in merged[SUBCHART]["deployments"] if d["name"] == "ftp-assets"]
    return deployment


# --- The tests ---------------------------------------------------------------------------------


def test_chart_defaults_alone_are_valid() -> None:
    """The validator itself works: the chart's own defaults pass."""
    validate_as_helm({})


def test_helm_values_are_valid_for_the_chart(values: dict[str, Any]) -> None:
    validate_as_helm(values)


def _set(values: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    broken = copy.deepcopy(values)
    node: Any = broken
    *parents, last = path.split(".")
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    node[last] = value
    return broken


@pytest.mark.parametrize(
    ("path", "bad_value"),
    [
        ("dagster-user-deployments.deployments.0.port", "3030"),  # string for an integer
        ("runLauncher.type", "K8SRunLauncher"),  # not one of the enum's values
        (f"{QUEUE}.maxConcurrentRuns", "ten"),
        (f"{QUEUE}.tagConcurrencyLimits.0.limt", 1),  # misspelt key: additionalProperties false
        ("dagster-user-deployments.deployments.0.image.pullPolicy", "Sometimes"),
        ("postgresql.enabled", "false"),  # a string, not a boolean
        ("telemetry.enabled", "no"),
    ],
)
def test_validation_rejects_broken_values(values: dict[str, Any], path: str, bad_value: Any) -> None:
    with pytest.raises(jsonschema.ValidationError):
        validate_as_helm(_set(values, path, bad_value))


def test_validation_rejects_a_deployment_missing_a_required_field(values: dict[str, Any]) -> None:
    broken = copy.deepcopy(values)
    del broken[SUBCHART]["deployments"][0]["image"]  # lists replace: no default fills it in
    with pytest.raises(jsonschema.ValidationError, match="'image' is a required property"):
        validate_as_helm(broken)


def test_kubernetes_typed_fields_are_not_checked_by_the_schema(values: dict[str, Any]) -> None:
    """The known blind spot (see docs/kubernetes.md): nonsense under a Kubernetes `$ref` passes
    the offline schema check; the resource and env tests below cover what we rely on."""
    nonsense = {"requests": "lots"}
    validate_as_helm(_set(values, "dagster-user-deployments.deployments.0.resources", nonsense))


def test_user_deployment_serves_the_code_location(merged: dict[str, Any]) -> None:
    deployment = _deployment(merged)
    args = deployment["dagsterApiGrpcArgs"]
    assert args[args.index("--module-name") + 1] == "ftp_assets.definitions"
    assert deployment["port"] == 3030  # the port deploy/Dockerfile exposes
    assert merged[SUBCHART]["enabled"] and merged[SUBCHART]["enableSubchart"]


def test_runs_launch_as_kubernetes_jobs_with_one_fine_tune_per_task(
    merged: dict[str, Any],
) -> None:
    assert merged["runLauncher"]["type"] == "K8sRunLauncher"
    coordinator = merged["dagsterDaemon"]["runCoordinator"]
    assert coordinator["enabled"] and coordinator["type"] == "QueuedRunCoordinator"
    queue = coordinator["config"]["queuedRunCoordinator"]
    assert isinstance(queue["maxConcurrentRuns"], int) and queue["maxConcurrentRuns"] > 0
    assert {
        "key": FINE_TUNE_TAG,
        "value": {"applyLimitPerUniqueValue": True},
        "limit": 1,
    } in queue["tagConcurrencyLimits"]
    retries = merged["dagsterDaemon"]["runRetries"]
    assert retries["enabled"] and retries["maxRetries"] == 2
    assert merged["telemetry"]["enabled"] is False


def test_instance_uses_the_external_postgresql(merged: dict[str, Any]) -> None:
    pg = merged["postgresql"]
    assert pg["enabled"] is False and pg["postgresqlHost"]
    assert pg["postgresqlScheme"] == "postgresql+psycopg2"
    # The password lives only in the Secret the chart is told not to generate.
    assert merged["generatePostgresqlPasswordSecret"] is False
    assert merged["global"]["postgresqlSecretName"]
    assert pg["postgresqlPassword"] == ""
    subchart_global = merged[SUBCHART]["global"]
    assert subchart_global["postgresqlSecretName"] == merged["global"]["postgresqlSecretName"]


def _env_entries(node: Any, path: str = "") -> Iterator[tuple[str, str, dict[str, Any]]]:
    """Every environment variable set anywhere in the values: (where, name, entry)."""
    if isinstance(node, dict):
        for key, child in node.items():
            where = f"{path}.{key}" if path else key
            if key == "env" and isinstance(child, list):
                for entry in child:
                    yield where, entry.get("name", ""), entry
            elif key == "env" and isinstance(child, dict):
                for name, value in child.items():
                    yield where, name, {"name": name, "value": value}
            elif key == "envVars" and isinstance(child, list):
                for item in child:
                    name, _, value = item.partition("=")
                    # NAME alone passes the daemon's own value through: nothing inline.
                    yield where, name, {"name": name, "value": value} if value else {"name": name}
            else:
                yield from _env_entries(child, where)
    elif isinstance(node, list):
        for index, child in enumerate(node):
            yield from _env_entries(child, f"{path}.{index}")


def _scalars(node: Any, path: str = "", key: str = "") -> Iterator[tuple[str, str, Any]]:
    if isinstance(node, dict):
        for child_key, child in node.items():
            yield from _scalars(child, f"{path}.{child_key}" if path else child_key, child_key)
    elif isinstance(node, list):
        for index, child in enumerate(node):
            yield from _scalars(child, f"{path}.{index}", key)
    else:
        yield path, key, node


def test_no_secret_is_inline(values: dict[str, Any], merged: dict[str, Any]) -> None:
    entries = list(_env_entries(merged))
    assert entries, "no env var found: the walk is broken"
    for where, name, entry in entries:
        value = entry.get("value")
        assert value is None or isinstance(value, str), f"{where}: {name} must be a string"
        if SECRET_NAME.search(name):
            assert value is None, f"{where}: {name} is set inline; it must come from a Secret"
        if value is not None:
            assert not URL_WITH_CREDENTIALS.search(value), f"{where}: {name} holds credentials"
    # Nor anywhere else in our values: no password-like key with a value, no URL with user:pw@.
    for where, key, value in _scalars(values):
        if isinstance(value, str):
            assert not URL_WITH_CREDENTIALS.search(value), f"{where} holds credentials"
            if SECRET_VALUE_KEY.search(key):
                assert value == "", f"{where} is set inline; it must come from a Secret"


def test_code_server_and_runs_get_the_secrets_and_the_mlflow_uri(
    merged: dict[str, Any],
) -> None:
    deployment = _deployment(merged)
    launcher = merged["runLauncher"]["config"]["k8sRunLauncher"]
    secret_names = {s["name"] for s in deployment["envSecrets"]}
    assert secret_names and secret_names == {s["name"] for s in launcher["envSecrets"]}

    def plain_env(entries: list[dict[str, Any]]) -> dict[str, str]:
        return {e["name"]: e["value"] for e in entries if "value" in e}

    server_env = plain_env(deployment["env"])
    run_env = plain_env(launcher["runK8sConfig"]["containerConfig"]["env"])
    assert server_env["MLFLOW_TRACKING_URI"].startswith(("http://", "https://"))
    assert run_env == server_env


def _secret_keys_in_docs(secret: str) -> set[str]:
    """The keys docs/kubernetes.md's `kubectl create secret generic <secret> ...` command sets."""
    command = re.search(rf"create secret generic {re.escape(secret)}\b(?:[^\n]*\\\n)*[^\n]*", DOCS_FILE.read_text())
    assert command, f"docs/kubernetes.md does not create the Secret {secret}"
    return set(re.findall(r"--from-literal=([\w.-]+)=", command.group(0)))


def test_docs_create_the_secrets_the_values_use(merged: dict[str, Any]) -> None:
    for secret in (s["name"] for s in _deployment(merged)["envSecrets"]):
        assert {
            "OPENAI_API_KEY",
            "FTP_POSTS_DB_URL",
            "MLFLOW_TRACKING_USERNAME",
            "MLFLOW_TRACKING_PASSWORD",
        } <= _secret_keys_in_docs(secret)
    # The keys the chart reads the instance database's credentials from.
    instance_db_secret = merged["global"]["postgresqlSecretName"]
    instance_db_keys = _secret_keys_in_docs(instance_db_secret)
    assert {"postgresql-username", "postgresql-password"} <= instance_db_keys


_QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)(m|Ki|Mi|Gi|Ti)?$")
_UNITS = {None: 1, "m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def _quantity(value: Any) -> float:
    match = _QUANTITY.match(str(value))
    assert match, f"not a Kubernetes quantity: {value!r}"
    return float(match.group(1)) * _UNITS[match.group(2)]


@pytest.mark.parametrize(
    "path",
    [
        "dagster-user-deployments.deployments.0.resources",
        "dagsterWebserver.resources",
        "dagsterDaemon.resources",
        "runLauncher.config.k8sRunLauncher.resources",
    ],
)
def test_every_pod_has_requests_within_limits(merged: dict[str, Any], path: str) -> None:
    node: Any = merged
    for part in path.split("."):
        node = node[int(part)] if isinstance(node, list) else node[part]
    assert set(node) == {"requests", "limits"}, path
    for resource in ("cpu", "memory"):
        request, limit = node["requests"][resource], node["limits"][resource]
        assert 0 < _quantity(request) <= _quantity(limit), f"{path}.{resource}: {request} > {limit}"


def test_run_pods_are_sized_by_the_run_launcher(merged: dict[str, Any]) -> None:
    """With includeConfigInLaunchedRuns on, dagster-k8s lays the code server's resources over
    the run launcher's, so run pods would silently get the code server's size."""
    deployment = _deployment(merged)
    assert deployment["includeConfigInLaunchedRuns"]["enabled"] is False
    run_resources = merged["runLauncher"]["config"]["k8sRunLauncher"]["resources"]
    assert run_resources != deployment["resources"]


# --- Pod security --------------------------------------------------------------------------------
# The chart's schema accepts anything under a security context or a volume, so each pod is built
# here by dagster-k8s into the Kubernetes client's typed models (a misspelt key raises), then its
# effective settings are checked: a container's own value wins over its pod's.

DOCKERFILE = ROOT / "deploy" / "Dockerfile"
# dagster-k8s' names for the chart's runK8sConfig keys, as the chart's instance template maps them.
RUN_K8S_CONFIG_KEYS = {
    "containerConfig": "container_config",
    "podSpecConfig": "pod_spec_config",
    "podTemplateSpecMetadata": "pod_template_spec_metadata",
    "jobSpecConfig": "job_spec_config",
    "jobMetadata": "job_metadata",
}
# Subcharts of other projects that the values could switch on; their pods are not checked here.
UNCHECKED_SUBCHARTS = ("postgresql", "rabbitmq", "redis")


def _image_setting(pattern: str) -> str:
    match = re.search(pattern, DOCKERFILE.read_text(), re.MULTILINE)
    assert match, f"deploy/Dockerfile does not match {pattern}"
    return match.group(1)


def _pod_spec(job_config: DagsterK8sJobConfig, user_config: UserDefinedDagsterK8sConfig) -> Any:
    job = construct_dagster_k8s_job(
        job_config, args=["dagster"], job_name="check", user_defined_k8s_config=user_config, pod_name="check"
    )
    return job.spec.template.spec


def _chart_pod(component: dict[str, Any]) -> Any:
    """A pod the chart renders from a component's podSecurityContext, securityContext, volumes
    and volumeMounts."""
    return _pod_spec(
        DagsterK8sJobConfig(job_image="image"),
        UserDefinedDagsterK8sConfig(
            container_config={
                "securityContext": component.get("securityContext") or {},
                "volumeMounts": component.get("volumeMounts") or [],
            },
            pod_spec_config={
                "securityContext": component.get("podSecurityContext") or {},
                "volumes": component.get("volumes") or [],
            },
        ),
    )


def _run_pod(merged: dict[str, Any]) -> Any:
    """A run's pod as the K8sRunLauncher builds it from the instance config the chart renders."""
    launcher = merged["runLauncher"]["config"]["k8sRunLauncher"]
    run_k8s_config = {RUN_K8S_CONFIG_KEYS[key]: value for key, value in (launcher.get("runK8sConfig") or {}).items()}
    context = K8sContainerContext(
        env_secrets=[secret["name"] for secret in launcher["envSecrets"]],
        volume_mounts=launcher["volumeMounts"],
        volumes=launcher["volumes"],
        resources=launcher.get("resources"),
        security_context=launcher.get("securityContext"),
        run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(run_k8s_config),
    )
    job_config = DagsterK8sJobConfig(job_image="image", dagster_home=merged["global"]["dagsterHome"])
    return _pod_spec(job_config, context.run_k8s_config)


def _pods(merged: dict[str, Any]) -> dict[str, tuple[Any, set[str]]]:
    """Every kind of pod the values start: its spec and the paths it must be able to write."""
    ftp_home = _image_setting(r"\bFTP_HOME=(\S+)")
    dagster_storage = f"{merged['global']['dagsterHome']}/storage"
    # The chart gives the webserver's settings to its init containers and to the migration job.
    pods = {"webserver": (_chart_pod(merged["dagsterWebserver"]), {"/tmp"})}
    if merged["dagsterDaemon"]["enabled"]:
        pods["daemon"] = (_chart_pod(merged["dagsterDaemon"]), {"/tmp"})
    if merged[SUBCHART]["enabled"] and merged[SUBCHART]["enableSubchart"]:
        for deployment in merged[SUBCHART]["deployments"]:
            pods[f"code server {deployment['name']}"] = (_chart_pod(deployment), {"/tmp", ftp_home})
    if merged["runLauncher"]["type"] == "K8sRunLauncher":
        pods["run"] = (_run_pod(merged), {"/tmp", dagster_storage, ftp_home})
    if _trainer_env(merged).get("FTP_TRAINER_IMAGE"):
        pods["trainer"] = (_trainer_pod(merged).spec, {"/tmp"})
    if merged["runLauncher"]["type"] == "CeleryK8sRunLauncher":
        pods["celery workers"] = (_chart_pod(merged["runLauncher"]["config"]["celeryK8sRunLauncher"]), {"/tmp"})
    if merged["flower"]["enabled"]:
        pods["flower"] = (_chart_pod(merged["flower"]), {"/tmp"})
    return pods


def _security_problems(pod: Any) -> list[str]:
    problems = []
    for container in pod.containers:

        def effective(name: str, container: Any = container) -> Any:
            own = getattr(container.security_context, name, None)
            return own if own is not None else getattr(pod.security_context, name, None)

        context = container.security_context
        if effective("run_as_non_root") is not True:
            problems.append("runAsNonRoot is not true")
        if effective("run_as_user") == 0:
            problems.append("runAsUser is 0 (root)")
        seccomp = effective("seccomp_profile")
        if seccomp is None or seccomp.type != "RuntimeDefault":
            problems.append("no RuntimeDefault seccomp profile")
        if context is None or context.read_only_root_filesystem is not True:
            problems.append("readOnlyRootFilesystem is not true")
        if context is None or context.allow_privilege_escalation is not False:
            problems.append("allowPrivilegeEscalation is not false")
        if context is None or context.capabilities is None or context.capabilities.drop != ["ALL"]:
            problems.append("capabilities are not dropped: drop must be [ALL]")
    return problems


def _writable_paths(pod: Any) -> set[str]:
    empty_dirs = {volume.name for volume in pod.volumes or [] if volume.empty_dir is not None}
    return {
        mount.mount_path
        for container in pod.containers
        for mount in container.volume_mounts or []
        if mount.name in empty_dirs and not mount.read_only
    }


def _problems(merged: dict[str, Any]) -> dict[str, list[str]]:
    """What is wrong with each pod: its security settings, then the paths it cannot write."""
    found = {}
    for name, (pod, must_write) in _pods(merged).items():
        problems = _security_problems(pod)
        problems += [f"no writable emptyDir at {path}" for path in sorted(must_write - _writable_paths(pod))]
        if problems:
            found[name] = problems
    for subchart in UNCHECKED_SUBCHARTS:
        if merged[subchart]["enabled"]:
            found[subchart] = ["a subchart whose pods this check does not cover"]
    return found


def test_every_pod_runs_as_non_root_read_only_and_without_capabilities(merged: dict[str, Any]) -> None:
    pods = _pods(merged)
    assert {"webserver", "daemon", "code server ftp-assets", "run"} <= set(pods)
    assert _problems(merged) == {}


def _without(node: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in node.items() if k != key}


_CONTAINER_SECURITY = "dagsterWebserver.securityContext"
_RUN_CONTAINER = "runLauncher.config.k8sRunLauncher.runK8sConfig.containerConfig"
_RUN_POD = "runLauncher.config.k8sRunLauncher.runK8sConfig.podSpecConfig"


@pytest.mark.parametrize(
    ("path", "change", "pod", "problem"),
    [
        (_CONTAINER_SECURITY, lambda c: _without(c, "readOnlyRootFilesystem"), "webserver", "readOnlyRootFilesystem"),
        ("dagsterDaemon.securityContext", lambda c: {**c, "capabilities": {"drop": ["NET_RAW"]}}, "daemon", "drop"),
        (
            "dagster-user-deployments.deployments.0.securityContext",
            lambda c: {**c, "allowPrivilegeEscalation": True},
            "code server ftp-assets",
            "allowPrivilegeEscalation",
        ),
        (f"{_RUN_CONTAINER}.securityContext", lambda c: {}, "run", "readOnlyRootFilesystem"),
        (f"{_RUN_POD}.securityContext", lambda c: {**c, "runAsUser": 0}, "run", "runAsUser is 0"),
        (_CONTAINER_SECURITY, lambda c: {**c, "seccompProfile": {"type": "Unconfined"}}, "webserver", "seccomp"),
        (f"{_RUN_CONTAINER}.volumeMounts", lambda m: m[:1], "run", "emptyDir at /opt/dagster/dagster_home/storage"),
        ("dagsterDaemon.volumes", lambda v: [], "daemon", "emptyDir at /tmp"),
        ("flower.enabled", lambda _: True, "flower", "runAsNonRoot"),
        ("rabbitmq", lambda _: {"enabled": True}, "rabbitmq", "does not cover"),
    ],
)
def test_security_check_reports_what_is_missing(
    values: dict[str, Any], path: str, change: Any, pod: str, problem: str
) -> None:
    merged = coalesce_chart(values)[0]
    node: Any = merged
    for part in path.split("."):
        node = node[int(part)] if isinstance(node, list) else node[part]
    # Set on the merged values: the anchors share one object, so the change goes on a copy.
    broken = _set(merged, path, change(copy.deepcopy(node)))
    problems = _problems(broken).get(pod, [])
    assert any(problem in p for p in problems), f"{pod}: {problems}"


def test_a_misspelt_security_key_is_an_error(values: dict[str, Any]) -> None:
    misspelt = _set(values, _CONTAINER_SECURITY, {"readOnlyRootFileSystem": True})
    with pytest.raises(Exception, match="readOnlyRootFileSystem"):
        _problems(coalesce_chart(misspelt)[0])


def test_pods_agree_with_the_image(merged: dict[str, Any]) -> None:
    """The user and DAGSTER_HOME the values assume are the ones deploy/Dockerfile sets."""
    assert merged["global"]["dagsterHome"] == _image_setting(r"\bDAGSTER_HOME=(\S+)")
    image_user = int(_image_setting(r"^USER (\d+)"))
    for name, (pod, _) in _pods(merged).items():
        assert pod.security_context.run_as_user == image_user, name


# --- Self-hosted training ------------------------------------------------------------------------
# The trainer's pod is not the chart's: the run's pod creates it through PipesK8sClient from the
# FTP_TRAINER_* variables (ftp_assets/adapters/trainer_pods.py), in its own namespace, with the
# RBAC of deploy/trainer-rbac.yaml. Built here as PipesK8sClient builds it.

TRAINER_DOCKERFILE = ROOT / "deploy" / "trainer.Dockerfile"
TRAINER_RBAC = ROOT / "deploy" / "trainer-rbac.yaml"
TRAINER_VARIABLES = (
    "FTP_PROVIDER",
    "FTP_TRAINER_IMAGE",
    "FTP_TRAINER_NAMESPACE",
    "FTP_TRAINER_POD_SPEC",
    "FTP_SELF_HOSTED_BASE_MODEL",
    "FTP_TRAINER_WORK_DIR",
)
# The release's namespace and name, as docs/kubernetes.md installs it.
RELEASE_NAMESPACE = "ftp-assets"
RELEASE_NAME = "dagster"


def _plain_env(entries: list[dict[str, Any]]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in entries if "value" in e}


def _trainer_env(merged: dict[str, Any]) -> dict[str, str]:
    """The variables of the run pods, where the training step runs and starts the trainer's pod."""
    launcher = merged["runLauncher"]["config"]["k8sRunLauncher"]
    return _plain_env(launcher["runK8sConfig"]["containerConfig"]["env"])


def _trainer_pod(merged: dict[str, Any]) -> Any:
    """The trainer's pod as the run's step builds it: the deployment settings read from the run
    pod's variables, the code location's resource, then PipesK8sClient's pod body."""
    env = _trainer_env(merged)
    with mock.patch.dict(os.environ, env, clear=True):
        deployment = DeploymentSettings()
    settings = self_hosted_training(deployment).pod_settings()
    meta, spec = pod_meta_and_spec(settings, "sft-" + "0" * 24)
    return build_pod_body(
        pod_name="dagster-check-fine-tuned-model-0000000000",
        image=settings.image,
        command=["ftp-train"],
        env_vars={"DAGSTER_PIPES_CONTEXT": "context"},
        base_pod_meta=meta,
        base_pod_spec=spec,
    )


def _trainer_image_env() -> dict[str, str]:
    """KEY=value pairs of the ENV instructions of deploy/trainer.Dockerfile."""
    text = re.sub(r"\\\n", " ", TRAINER_DOCKERFILE.read_text())
    pairs = [
        pair
        for line in text.splitlines()
        if line.startswith("ENV ")
        for pair in line.removeprefix("ENV ").split()
        if "=" in pair
    ]
    return dict(pair.split("=", 1) for pair in pairs)


def test_code_server_and_runs_get_the_self_hosted_settings(merged: dict[str, Any]) -> None:
    server_env = _plain_env(_deployment(merged)["env"])
    run_env = _trainer_env(merged)
    for name in TRAINER_VARIABLES:
        assert server_env.get(name) and run_env.get(name) == server_env[name], name
    assert run_env["FTP_PROVIDER"] in {"openai", "self_hosted"}
    image = run_env["FTP_TRAINER_IMAGE"]
    assert ":" in image.rpartition("/")[2] and not image.endswith(":latest"), image
    assert resolve_namespace(run_env["FTP_TRAINER_NAMESPACE"]) == run_env["FTP_TRAINER_NAMESPACE"]


def test_trainer_pod_spec_asks_for_a_gpu_node_and_the_volumes(merged: dict[str, Any]) -> None:
    env = _trainer_env(merged)
    fragment = parse_pod_spec(env["FTP_TRAINER_POD_SPEC"])
    assert fragment["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"

    pod = _trainer_pod(merged)
    assert pod.metadata.labels[JOB_LABEL] == "sft-" + "0" * 24
    spec = pod.spec
    (container,) = spec.containers
    assert container.image == env["FTP_TRAINER_IMAGE"] and container.command == ["ftp-train"]
    resources = container.resources
    assert resources.limits["nvidia.com/gpu"] == "1"
    # An extended resource is not overcommitted: a request, if any, equals the limit.
    assert resources.requests.get("nvidia.com/gpu", "1") == "1"
    for resource in ("cpu", "memory"):
        assert 0 < _quantity(resources.requests[resource]) <= _quantity(resources.limits[resource]), resource
    assert spec.node_selector == {"nvidia.com/gpu.present": "true"}
    assert any(
        t.key == "nvidia.com/gpu" and t.effect == "NoSchedule" and t.operator in {"Exists", "Equal"}
        for t in spec.tolerations
    )
    assert spec.restart_policy == "Never"

    claims = {v.name: v.persistent_volume_claim for v in spec.volumes if v.persistent_volume_claim is not None}
    mounts = {m.mount_path: m for m in container.volume_mounts}
    model_cache, work = mounts["/models"], mounts[env["FTP_TRAINER_WORK_DIR"]]
    assert claims[model_cache.name].claim_name == "ftp-model-cache"
    assert model_cache.read_only is True and claims[model_cache.name].read_only is True
    assert claims[work.name].claim_name == "ftp-trainer-work"
    assert not work.read_only and not claims[work.name].read_only
    # The base model and the image's Hugging Face home are on the model cache.
    assert env["FTP_SELF_HOSTED_BASE_MODEL"].startswith("/models/")
    assert _trainer_image_env()["HF_HOME"].startswith("/models/")


def test_trainer_pod_runs_as_the_trainer_images_user(merged: dict[str, Any]) -> None:
    users = re.findall(r"^USER (\d+)", TRAINER_DOCKERFILE.read_text(), re.MULTILINE)
    assert users and int(users[-1]) == TRAINER_UID
    pod = _trainer_pod(merged)
    assert pod.spec.security_context.run_as_user == TRAINER_UID
    # The writable paths the image points its caches at are on the pod's /tmp emptyDir.
    image_env = _trainer_image_env()
    for name in ("HF_DATASETS_CACHE", "XDG_CACHE_HOME", "TRITON_CACHE_DIR"):
        assert image_env[name].startswith("/tmp/"), name
    assert "/tmp" in _writable_paths(pod.spec)


def _rbac() -> list[dict[str, Any]]:
    with TRAINER_RBAC.open() as f:
        return [document for document in yaml.safe_load_all(f) if document]


def test_trainer_rbac_lets_the_run_pods_manage_trainer_pods(merged: dict[str, Any]) -> None:
    env = _trainer_env(merged)
    namespace = env["FTP_TRAINER_NAMESPACE"]
    documents = {(d["kind"], d["metadata"]["name"]): d for d in _rbac()}
    assert all(d["metadata"]["namespace"] == namespace for d in documents.values())

    (role,) = [d for (kind, _), d in documents.items() if kind == "Role"]
    granted = {
        (resource, verb)
        for rule in role["rules"]
        if rule["apiGroups"] == [""]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    # PipesK8sClient: create, read (wait), logs, events (on failure), delete; the guard: list, delete, get.
    needed = {("pods", v) for v in ("create", "get", "list", "delete")} | {("pods/log", "get"), ("events", "list")}
    assert needed <= granted, needed - granted
    assert not any("*" in rule["verbs"] or "*" in rule["resources"] for rule in role["rules"])

    (binding,) = [d for (kind, _), d in documents.items() if kind == "RoleBinding"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    # The run pods' service account: the chart's global.serviceAccountName, serviceAccount.name, or
    # the release's full name (the release `dagster` of the chart `dagster` is just `dagster`).
    run_account = merged["global"]["serviceAccountName"] or merged["serviceAccount"]["name"] or RELEASE_NAME
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": run_account, "namespace": RELEASE_NAMESPACE}]
    assert f"--namespace {RELEASE_NAMESPACE}" in DOCS_FILE.read_text()
    assert f"helm upgrade --install {RELEASE_NAME} " in DOCS_FILE.read_text()

    # The trainer pod's own account is created there, without an API token.
    account = parse_pod_spec(env["FTP_TRAINER_POD_SPEC"])["serviceAccountName"]
    assert documents[("ServiceAccount", account)]["automountServiceAccountToken"] is False


# --- The endpoints file --------------------------------------------------------------------------
# FTP_ENDPOINTS_FILE is read when the code location loads (ftp_assets/settings.py): the code server
# and the run pods both mount the ConfigMap of deploy/serving/vllm.yaml and get the vLLM key.

SERVING_MANIFESTS = ROOT / "deploy" / "serving" / "vllm.yaml"
ENDPOINTS_VARIABLE = "FTP_ENDPOINTS_FILE"


def _endpoints_configmap() -> dict[str, Any]:
    with SERVING_MANIFESTS.open() as f:
        (configmap,) = [d for d in yaml.safe_load_all(f) if d and d["kind"] == "ConfigMap"]
    return configmap


def _pods_reading_endpoints(merged: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The code server's and the run pods' env, envSecrets, volumes and volume mounts, as the
    chart and the K8sRunLauncher take them from the values."""
    deployment = _deployment(merged)
    launcher = merged["runLauncher"]["config"]["k8sRunLauncher"]
    run = launcher["runK8sConfig"]
    return {
        "code server": {
            "env": deployment["env"],
            "envSecrets": deployment["envSecrets"],
            "volumes": deployment["volumes"],
            "volumeMounts": deployment["volumeMounts"],
        },
        "run": {
            "env": run["containerConfig"]["env"],
            "envSecrets": launcher["envSecrets"],
            "volumes": run["podSpecConfig"]["volumes"],
            "volumeMounts": run["containerConfig"]["volumeMounts"],
        },
    }


@pytest.mark.parametrize("pod", ["code server", "run"])
def test_code_server_and_runs_mount_the_endpoints_configmap(merged: dict[str, Any], pod: str) -> None:
    wiring = _pods_reading_endpoints(merged)[pod]
    env = {e["name"]: e for e in wiring["env"]}
    path = env[ENDPOINTS_VARIABLE]["value"]
    folder, _, file_name = path.rpartition("/")
    (endpoints_mount,) = [m for m in wiring["volumeMounts"] if m["mountPath"].rstrip("/") == folder]
    assert endpoints_mount.get("readOnly") is True
    assert not endpoints_mount.get("subPath"), "a subPath mount never sees the ConfigMap's updates"
    (endpoints_volume,) = [v for v in wiring["volumes"] if v["name"] == endpoints_mount["name"]]
    configmap = _endpoints_configmap()
    assert endpoints_volume["configMap"]["name"] == configmap["metadata"]["name"]
    # Without `items`, each key of the ConfigMap is a file of that name in the folder.
    assert "items" not in endpoints_volume["configMap"]
    assert file_name in configmap["data"]
    # A ConfigMap is mounted only in its own namespace: the release's.
    assert configmap["metadata"]["namespace"] == RELEASE_NAMESPACE


@pytest.mark.parametrize("pod", ["code server", "run"])
def test_code_server_and_runs_serve_the_adapters_on_vllm(merged: dict[str, Any], pod: str) -> None:
    env = {e["name"]: e for e in _pods_reading_endpoints(merged)[pod]["env"]}
    serving = env["FTP_SERVING_ENDPOINT"]["value"]
    assert serving == "vllm-base"
    endpoint = yaml.safe_load(_endpoints_configmap()["data"]["endpoints.yaml"])["endpoints"][serving]
    assert endpoint["kind"] == "vllm"
    key = env[endpoint["api_key_env"]]
    assert "value" not in key
    # Optional: only the self_hosted path calls vLLM, so the openai path runs without the Secret.
    assert key["valueFrom"]["secretKeyRef"] == {"name": endpoint["secret_name"], "key": "api-key", "optional": True}


def test_every_endpoints_key_reaches_the_pods_from_its_secret(merged: dict[str, Any]) -> None:
    """secret_name names the Secret the pods really take api_key_env from: through a secretKeyRef
    (key `api-key`), or as a key of a Secret passed whole through envSecrets that
    docs/kubernetes.md creates with that key."""
    endpoints = yaml.safe_load(_endpoints_configmap()["data"]["endpoints.yaml"])["endpoints"]
    for pod, wiring in _pods_reading_endpoints(merged).items():
        env = {e["name"]: e for e in wiring["env"]}
        whole = {s["name"] for s in wiring["envSecrets"]}
        for name, endpoint in endpoints.items():
            variable, secret = endpoint["api_key_env"], endpoint["secret_name"]
            if variable in env:
                assert env[variable]["valueFrom"]["secretKeyRef"]["name"] == secret, (pod, name)
            else:
                assert secret in whole, f"{pod}: {name}'s {variable} comes from no Secret {secret}"
                assert variable in _secret_keys_in_docs(secret), (pod, name)


def test_the_endpoints_file_loads_as_the_code_location_does(merged: dict[str, Any], tmp_path: Path) -> None:
    """The code location's own check at load, on the run pods' variables and the ConfigMap's file."""
    env = _plain_env(_pods_reading_endpoints(merged)["run"]["env"])
    file_name = env[ENDPOINTS_VARIABLE].rpartition("/")[2]
    mounted = tmp_path / file_name
    mounted.write_text(_endpoints_configmap()["data"][file_name])
    env[ENDPOINTS_VARIABLE] = str(mounted)
    with mock.patch.dict(os.environ, env, clear=True):
        settings = DeploymentSettings.from_environment(require_complete=False)
        assert settings.endpoints()[settings.serving_endpoint].kind == "vllm"
    misnamed = {**env, "FTP_SERVING_ENDPOINT": "vllm-bsae"}
    with (
        mock.patch.dict(os.environ, misnamed, clear=True),
        pytest.raises(SettingsError, match="FTP_SERVING_ENDPOINT=vllm-bsae"),
    ):
        DeploymentSettings.from_environment(require_complete=False)
