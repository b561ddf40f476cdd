"""deploy/serving/vllm.yaml, deploy/endpoints.example.yaml and deploy/serving.Dockerfile, checked
without a cluster, a GPU or a container engine (docs/serving.md#not-run-on-these-machines).

Each manifest is read into the Kubernetes client's typed models (dagster-k8s' strict converter:
an unknown or misspelt key raises), then what the serving side relies on is checked: LoRA on with
a rank the trainer's adapters fit, the resolver plugin enabled and pointed at the pipeline's
adapters root on object storage (helm-values.yaml's FTP_STORAGE_URL + "/adapters") with its cache
on a writable emptyDir, the GPU, the probes, the pod security, the Service's wiring and an
endpoints file that agrees with the example, names the Service and holds no key.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import kubernetes.client as k8s
import pytest
import yaml
from dagster_k8s.models import k8s_model_from_dict, k8s_snake_case_dict

from ftp_assets_tests.test_dockerfile import (
    base_images,
    copied_sources,
    instructions,
    is_pinned_by_digest,
    pip_installs,
)
from ftp_trainer.config import TrainerConfig

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "deploy" / "serving" / "vllm.yaml"
ENDPOINTS_EXAMPLE = ROOT / "deploy" / "endpoints.example.yaml"
SERVING_DOCKERFILE = ROOT / "deploy" / "serving.Dockerfile"
PYPROJECT = ROOT / "pyproject.toml"
HELM_VALUES = ROOT / "helm-values.yaml"
ENDPOINTS_KEY = "endpoints.yaml"
PLUGIN_GROUP = "vllm.general_plugins"
PLUGIN_NAME = "ftp_adapter_resolver"
PLUGIN_VALUE = "ftp_serving.vllm_plugin:register"
# vLLM accepts only these for --max-lora-rank (vllm/config/lora.py, MaxLoRARanks, v0.26 and later).
VLLM_MAX_LORA_RANKS = {1, 8, 16, 32, 64, 128, 256, 320, 512}
ENDPOINT_FIELDS = {"base_url", "api_key_env", "secret_name", "kind"}
# An OpenAI-style secret key, or a field or value that looks like one.
KEY_LOOKING = re.compile(r"\bsk-[A-Za-z0-9_-]{8,}|\bBearer\s+\S+", re.IGNORECASE)
MODELS = {
    ("apps/v1", "Deployment"): k8s.V1Deployment,
    ("v1", "Service"): k8s.V1Service,
    ("v1", "ConfigMap"): k8s.V1ConfigMap,
    ("v1", "ServiceAccount"): k8s.V1ServiceAccount,
}


# --- Reading the manifests -----------------------------------------------------------------------


def typed(document: dict[str, Any]) -> Any:
    """The document as the Kubernetes client's model; raises on an unknown kind or key."""
    model = MODELS[(document["apiVersion"], document["kind"])]
    return k8s_model_from_dict(model, k8s_snake_case_dict(model, document))


@pytest.fixture(scope="module")
def documents() -> list[dict[str, Any]]:
    return [document for document in yaml.safe_load_all(MANIFESTS.read_text()) if document]


def the(documents: list[dict[str, Any]], kind: str) -> Any:
    (found,) = [typed(document) for document in documents if document["kind"] == kind]
    return found


@pytest.fixture(scope="module")
def deployment(documents: list[dict[str, Any]]) -> k8s.V1Deployment:
    return the(documents, "Deployment")


@pytest.fixture(scope="module")
def container(deployment: k8s.V1Deployment) -> k8s.V1Container:
    (vllm,) = deployment.spec.template.spec.containers
    return vllm


@pytest.fixture(scope="module")
def env(container: k8s.V1Container) -> dict[str, k8s.V1EnvVar]:
    return {variable.name: variable for variable in container.env}


def flag(container: k8s.V1Container, name: str) -> str:
    """The value after `name` in the container's args (`--flag value` or `--flag=value`)."""
    args = container.args
    for index, arg in enumerate(args):
        if arg == name:
            return args[index + 1]
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
    raise AssertionError(f"{name} is not in the args {args}")


def mount(container: k8s.V1Container, path: str) -> k8s.V1VolumeMount:
    (found,) = [m for m in container.volume_mounts if m.mount_path == path]
    return found


def volume(deployment: k8s.V1Deployment, name: str) -> k8s.V1Volume:
    (found,) = [v for v in deployment.spec.template.spec.volumes if v.name == name]
    return found


def endpoints_of(text: str) -> dict[str, Any]:
    return yaml.safe_load(text)["endpoints"]


def pipeline_adapters_root() -> str:
    """Where the pipeline puts adapters: helm-values.yaml's FTP_STORAGE_URL + "/adapters", as
    ftp_assets.definitions.self_hosted_training derives it (the code server's and the runs' env)."""
    values = yaml.safe_load(HELM_VALUES.read_text())
    (deployment,) = [d for d in values["dagster-user-deployments"]["deployments"] if d["name"] == "ftp-assets"]
    (storage,) = [e["value"] for e in deployment["env"] if e["name"] == "FTP_STORAGE_URL"]
    return f"{storage.rstrip('/')}/adapters"


def plugin_entry_point() -> str | None:
    with PYPROJECT.open("rb") as f:
        entry_points = tomllib.load(f)["project"].get("entry-points", {})
    return entry_points.get(PLUGIN_GROUP, {}).get(PLUGIN_NAME)


# --- Typed models --------------------------------------------------------------------------------


def test_every_document_is_a_known_kind_with_valid_keys(documents: list[dict[str, Any]]) -> None:
    kinds = sorted(document["kind"] for document in documents)
    assert kinds == ["ConfigMap", "Deployment", "Service", "ServiceAccount"]
    for document in documents:
        typed(document)


def test_a_misspelt_key_is_an_error(documents: list[dict[str, Any]]) -> None:
    (raw,) = [document for document in documents if document["kind"] == "Deployment"]
    broken = yaml.safe_load(yaml.safe_dump(raw))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}
    with pytest.raises(Exception, match="readinessprobe"):
        typed(broken)


# --- The Deployment ------------------------------------------------------------------------------


def test_two_replicas_serve_the_base_with_lora(deployment: k8s.V1Deployment, container: k8s.V1Container) -> None:
    assert deployment.spec.replicas == 2
    assert container.command == ["vllm", "serve"]
    assert "--enable-lora" in container.args
    assert flag(container, "--served-model-name")
    # The model (the first positional argument) is a folder on the model cache volume.
    assert container.args[0].startswith(mount(container, "/models").mount_path + "/")
    # A rolling update never asks for a GPU beyond the replicas'.
    assert deployment.spec.strategy.rolling_update.max_surge == 0


def test_every_adapter_the_trainer_writes_fits_the_lora_limits(container: k8s.V1Container) -> None:
    max_rank = int(flag(container, "--max-lora-rank"))
    assert max_rank >= TrainerConfig().max_serving_rank, "the trainer would write adapters vLLM refuses"
    assert max_rank in VLLM_MAX_LORA_RANKS, f"vLLM refuses --max-lora-rank {max_rank}"
    max_loras, max_cpu_loras = int(flag(container, "--max-loras")), int(flag(container, "--max-cpu-loras"))
    assert (max_loras, max_cpu_loras) == (4, 16)
    assert max_cpu_loras >= max_loras, "vLLM requires --max-cpu-loras >= --max-loras"


def test_the_resolver_plugin_is_enabled(env: dict[str, k8s.V1EnvVar]) -> None:
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"].value.lower() in {"true", "1"}
    plugins = [name.strip() for name in env["VLLM_PLUGINS"].value.split(",")]
    assert PLUGIN_NAME in plugins
    # The built-in filesystem resolver would serve a folder without the hash and retirement checks.
    assert "VLLM_LORA_RESOLVER_CACHE_DIR" not in env
    assert "lora_filesystem_resolver" not in plugins


def test_the_adapters_root_is_the_pipelines_on_object_storage(
    deployment: k8s.V1Deployment, container: k8s.V1Container, env: dict[str, k8s.V1EnvVar]
) -> None:
    root = env["FTP_ADAPTERS_ROOT"].value
    # Where the trainer pods write the adapters and the pipeline writes retired.json.
    assert root == pipeline_adapters_root()
    # s3fs is what the image's s3 extra installs (test_the_serving_image_carries_the_plugin_alone).
    assert root.startswith("s3://"), root
    # No adapters volume: the only claim is the base model's.
    claims = {
        v.persistent_volume_claim.claim_name for v in deployment.spec.template.spec.volumes if v.persistent_volume_claim
    }
    assert claims == {"ftp-model-cache"}


def test_the_adapter_cache_is_on_a_writable_empty_dir(
    deployment: k8s.V1Deployment, container: k8s.V1Container, env: dict[str, k8s.V1EnvVar]
) -> None:
    cache = env["FTP_ADAPTER_CACHE_DIR"].value
    # The mount the cache lies under (the deepest one whose path is a prefix of it).
    under = [m for m in container.volume_mounts if cache.startswith(m.mount_path.rstrip("/") + "/")]
    assert under, f"{cache} is on the read-only root filesystem"
    cache_mount = max(under, key=lambda m: len(m.mount_path))
    assert not cache_mount.read_only
    empty_dir = volume(deployment, cache_mount.name).empty_dir
    assert empty_dir is not None and empty_dir.medium != "Memory", "the adapters' copies would take the pod's memory"
    assert empty_dir.size_limit, "an unbounded emptyDir fills the node's disk"


def test_the_base_comes_from_the_read_only_model_cache(
    deployment: k8s.V1Deployment, container: k8s.V1Container, env: dict[str, k8s.V1EnvVar]
) -> None:
    models = mount(container, "/models")
    assert models.read_only is True
    claim = volume(deployment, models.name).persistent_volume_claim
    assert claim.claim_name == "ftp-model-cache"
    assert claim.read_only is True
    assert env["HF_HOME"].value.startswith("/models/")
    assert env["HF_HUB_OFFLINE"].value == "1"


def test_one_gpu_per_replica_on_a_gpu_node(deployment: k8s.V1Deployment, container: k8s.V1Container) -> None:
    assert container.resources.requests["nvidia.com/gpu"] == "1"
    assert container.resources.limits["nvidia.com/gpu"] == "1"
    pod = deployment.spec.template.spec
    assert pod.node_selector == {"nvidia.com/gpu.present": "true"}
    assert any(t.key == "nvidia.com/gpu" and t.effect == "NoSchedule" for t in pod.tolerations)


def test_shared_memory_is_a_memory_backed_empty_dir(deployment: k8s.V1Deployment, container: k8s.V1Container) -> None:
    shm = volume(deployment, mount(container, "/dev/shm").name)
    assert shm.empty_dir is not None and shm.empty_dir.medium == "Memory"


def test_probes_ask_health_on_the_served_port(container: k8s.V1Container) -> None:
    (port,) = container.ports
    assert port.container_port == 8000
    for probe in (container.startup_probe, container.readiness_probe, container.liveness_probe):
        assert probe is not None and probe.http_get is not None
        assert probe.http_get.path == "/health"
        assert probe.http_get.port in (port.name, port.container_port)


def test_the_api_key_comes_from_a_secret_and_never_from_the_file(
    container: k8s.V1Container, env: dict[str, k8s.V1EnvVar]
) -> None:
    key = env["VLLM_API_KEY"]
    assert key.value is None
    assert key.value_from.secret_key_ref.name == "ftp-vllm"
    assert key.value_from.secret_key_ref.key == "api-key"
    assert not any(arg.startswith("--api-key") for arg in container.args)
    for variable in env.values():
        assert not KEY_LOOKING.search(variable.value or ""), variable.name


def test_runs_as_the_images_non_root_user_read_only(deployment: k8s.V1Deployment, container: k8s.V1Container) -> None:
    pod = deployment.spec.template.spec.security_context
    assert pod.run_as_non_root is True
    users = [arguments for keyword, arguments in instructions(SERVING_DOCKERFILE.read_text()) if keyword == "USER"]
    assert str(pod.run_as_user) == users[-1].partition(":")[0] == "10001"
    assert pod.seccomp_profile.type == "RuntimeDefault"
    context = container.security_context
    assert context.read_only_root_filesystem is True
    assert context.allow_privilege_escalation is False
    assert context.capabilities.drop == ["ALL"]
    # With a read-only root, every cache lives on the pod's /tmp.
    tmp = volume(deployment, mount(container, "/tmp").name)
    assert tmp.empty_dir is not None
    assert deployment.spec.template.spec.automount_service_account_token is False


def test_the_image_is_ours_pinned_by_a_digest(container: k8s.V1Container) -> None:
    image = container.image
    assert re.search(r"@sha256:([0-9a-f]{64}|DIGEST_OF_THE_PUSHED_IMAGE)$", image), image
    assert "/ftp-vllm@" in image
    assert "vllm/vllm-openai" not in image, "the official image has no resolver plugin"


# --- The Service ---------------------------------------------------------------------------------


def test_the_service_targets_the_deployments_pods_and_port(
    documents: list[dict[str, Any]], deployment: k8s.V1Deployment, container: k8s.V1Container
) -> None:
    service = the(documents, "Service")
    assert service.metadata.name == "ftp-vllm"
    assert service.metadata.namespace == deployment.metadata.namespace
    labels = deployment.spec.template.metadata.labels
    assert service.spec.selector and service.spec.selector.items() <= labels.items()
    assert deployment.spec.selector.match_labels.items() <= labels.items()
    (port,) = service.spec.ports
    (container_port,) = container.ports
    assert port.port == 8000
    assert port.target_port in (container_port.name, container_port.container_port)


# --- The endpoints file --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def configmap_text(documents: list[dict[str, Any]]) -> str:
    configmap = the(documents, "ConfigMap")
    assert configmap.metadata.name == "ftp-endpoints"
    # The code location's namespace (helm-values.yaml's release), where its pods can mount it.
    assert configmap.metadata.namespace == "ftp-assets"
    return configmap.data[ENDPOINTS_KEY]


def test_the_configmap_holds_the_example_endpoints(configmap_text: str) -> None:
    assert endpoints_of(configmap_text) == endpoints_of(ENDPOINTS_EXAMPLE.read_text())


@pytest.mark.parametrize("source", ["configmap", "example"])
def test_the_endpoints_name_variables_never_keys(configmap_text: str, source: str) -> None:
    text = configmap_text if source == "configmap" else ENDPOINTS_EXAMPLE.read_text()
    assert not KEY_LOOKING.search(text)
    endpoints = endpoints_of(text)
    assert {"openai", "vllm-base"} <= set(endpoints)
    for name, endpoint in endpoints.items():
        assert set(endpoint) <= ENDPOINT_FIELDS, f"{name}: {sorted(set(endpoint) - ENDPOINT_FIELDS)}"
        assert re.fullmatch(r"[A-Z_][A-Z0-9_]*", endpoint["api_key_env"]), name
        assert endpoint["kind"] in {"openai", "vllm"}
        assert endpoint["base_url"].endswith("/v1")


def test_the_vllm_endpoint_is_the_service_with_its_secret(
    configmap_text: str, documents: list[dict[str, Any]], env: dict[str, k8s.V1EnvVar]
) -> None:
    service = the(documents, "Service")
    endpoint = endpoints_of(configmap_text)["vllm-base"]
    assert endpoint["kind"] == "vllm"
    (port,) = service.spec.ports
    name, namespace = service.metadata.name, service.metadata.namespace
    assert endpoint["base_url"] == f"http://{name}.{namespace}.svc.cluster.local:{port.port}/v1"
    assert endpoint["secret_name"] == env["VLLM_API_KEY"].value_from.secret_key_ref.name


def test_the_pipelines_parser_accepts_the_example() -> None:
    """The other side of the contract: the code location's own reader of FTP_ENDPOINTS_FILE."""
    parser = pytest.importorskip("ftp_assets.adapters.endpoints")
    parsed = parser.parse_endpoints(ENDPOINTS_EXAMPLE.read_text(), source=str(ENDPOINTS_EXAMPLE))
    assert parsed["vllm-base"].kind == "vllm"
    assert parsed["openai"].kind == "openai"


# --- The plugin's packaging and the image --------------------------------------------------------


def test_the_plugin_entry_point_is_the_one_vllm_plugins_names(env: dict[str, k8s.V1EnvVar]) -> None:
    value = plugin_entry_point()
    if value is None:
        pytest.skip(
            f"pyproject.toml has no [project.entry-points.{PLUGIN_GROUP!r}] {PLUGIN_NAME} yet: the ftp_serving "
            "package and its entry point are being added separately; this test runs once they are"
        )
    assert value == PLUGIN_VALUE
    with PYPROJECT.open("rb") as f:
        packages = tomllib.load(f)["tool"]["setuptools"]["packages"]["find"]["include"]
    assert {"ftp_serving", "ftp_serving.*"} <= set(packages), "setuptools would not install ftp_serving"


def test_the_serving_image_carries_the_plugin_alone() -> None:
    text = SERVING_DOCKERFILE.read_text()
    (image,) = base_images(text)
    assert is_pinned_by_digest(image) and image.startswith("vllm/vllm-openai:v"), image
    sources = {source.rstrip("/") for source in copied_sources(text)}
    assert sources == {"pyproject.toml", "README.md", "ftp_serving"}
    installs = pip_installs(text)
    project = [command for command in installs if re.search(r"install\b.*\s\.(\s|$)", command)]
    assert project and all("--no-deps" in command for command in project), installs
    assert any("-r requirements.txt" in command and "-c constraints.txt" in command for command in installs)
    (extraction,) = [
        arguments for keyword, arguments in instructions(text) if keyword == "RUN" and "tomllib" in arguments
    ]
    assert re.findall(r'extras\["(\w+)"\]', extraction) == ["s3"]
    assert f'"{PLUGIN_NAME}") == "{PLUGIN_VALUE}"' in extraction, "the build does not check the entry point"
    env = " ".join(arguments for keyword, arguments in instructions(text) if keyword == "ENV")
    assert "PIP_NO_CACHE_DIR=1" in env and "HF_HUB_OFFLINE=1" in env
    ignore = SERVING_DOCKERFILE.with_name(SERVING_DOCKERFILE.name + ".dockerignore").read_text().splitlines()
    assert "*" in ignore
    assert {f"!{source}" for source in sources} <= set(ignore)
