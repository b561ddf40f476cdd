"""deploy/Dockerfile and its lock, checked without a container engine.

hadolint (`make check`) lints the Dockerfile but cannot see what this project relies on: a base
image pinned by a digest the release supplies, dependencies installed only from a lock with
hashes, and a lock that still matches pyproject.toml.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
LOCK = ROOT / "deploy" / "requirements.lock"
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
PINNED = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: comments dropped, continued lines joined."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    parsed = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, arguments = line.strip().partition(" ")
            parsed.append((keyword.upper(), " ".join(arguments.split())))
    return parsed


def base_images(text: str) -> list[str]:
    """Each FROM's image reference with the ARG defaults declared before it substituted; an
    ARG without a default stays `${NAME}`, as the build sees it until the release supplies it."""
    defaults: dict[str, str] = {}

    def substitute(match: re.Match[str]) -> str:
        return defaults.get(match.group(1), match.group(0))

    images = []
    for keyword, arguments in instructions(text):
        if keyword == "ARG":
            name, has_default, default = arguments.partition("=")
            if has_default:
                defaults[name] = default
        elif keyword == "FROM":
            images.append(re.sub(r"\$\{(\w+)\}", substitute, arguments.split()[0]))
    return images


def pip_installs(text: str) -> list[str]:
    return [
        command.strip()
        for keyword, arguments in instructions(text)
        if keyword == "RUN"
        for command in arguments.split("&&")
        if re.match(r"\s*(python3? -m )?pip install\b", command)
    ]


def is_pinned_by_digest(image: str) -> bool:
    """A literal digest, or a digest build argument without a default (no digest, no build)."""
    return bool(DIGEST.search(image) or re.search(r"@\$\{\w+\}$", image))


def locked_versions(text: str) -> dict[str, tuple[str, int]]:
    """name -> (version, number of hashes) for each requirement of a `--generate-hashes` lock."""
    locked: dict[str, tuple[str, int]] = {}
    name = ""
    for line in text.splitlines():
        if match := PINNED.match(line):
            name = canonicalize_name(match.group(1))
            locked[name] = (match.group(2), 0)
        elif line.strip().startswith("--hash=sha256:") and name:
            version, hashes = locked[name]
            locked[name] = (version, hashes + 1)
    return locked


def image_requirements(pyproject: dict[str, Any]) -> list[Requirement]:
    """What the image installs: the product's dependencies, the `s3` storage extra, and the
    build backend (the package is built without build isolation)."""
    project = pyproject["project"]
    names = [*project["dependencies"], *project.get("optional-dependencies", {}).get("s3", [])]
    return [Requirement(spec) for spec in [*names, *pyproject["build-system"]["requires"]]]


@pytest.fixture
def dockerfile() -> str:
    return DOCKERFILE.read_text()


def test_base_image_is_pinned_by_a_digest(dockerfile: str) -> None:
    images = base_images(dockerfile)
    assert images, "no FROM"
    for image in images:
        assert is_pinned_by_digest(image), image
        assert ":latest" not in image


@pytest.mark.parametrize(
    ("dockerfile", "pinned"),
    [
        ("FROM python:3.11-slim\n", False),
        ("FROM python:latest\n", False),
        ("ARG PYTHON_DIGEST=latest\nFROM python:3.11-slim@${PYTHON_DIGEST}\n", False),
        ("ARG PYTHON_DIGEST\nFROM python:3.11-slim@${PYTHON_DIGEST}\n", True),
        (f"FROM python:3.11-slim@sha256:{'a' * 64}\n", True),
    ],
)
def test_digest_check_tells_pinned_from_floating(dockerfile: str, pinned: bool) -> None:
    assert all(is_pinned_by_digest(image) for image in base_images(dockerfile)) is pinned


def test_runs_as_a_numeric_non_root_user(dockerfile: str) -> None:
    """Numeric, so that Kubernetes can verify runAsNonRoot without reading /etc/passwd."""
    users = [arguments for keyword, arguments in instructions(dockerfile) if keyword == "USER"]
    assert users, "no USER: the image runs as root"
    uid = users[-1].partition(":")[0]
    assert uid.isdigit() and int(uid) != 0, users[-1]


def test_dependencies_come_from_the_hashed_lock_alone(dockerfile: str) -> None:
    installs = pip_installs(dockerfile)
    from_lock = [command for command in installs if "-r requirements.lock" in command]
    assert len(from_lock) == 1, installs
    assert "--require-hashes" in from_lock[0]
    # Anything else pip installs brings no dependency of its own.
    for command in installs:
        assert command in from_lock or "--no-deps" in command, command
    copied = [arguments for keyword, arguments in instructions(dockerfile) if keyword == "COPY"]
    assert "deploy/requirements.lock ./" in copied


def test_pip_keeps_no_cache(dockerfile: str) -> None:
    env = " ".join(arguments for keyword, arguments in instructions(dockerfile) if keyword == "ENV")
    if "PIP_NO_CACHE_DIR=1" not in env:
        assert all("--no-cache-dir" in command for command in pip_installs(dockerfile))


def test_lock_pins_what_pyproject_requires_with_hashes() -> None:
    """Fails when pyproject.toml's dependencies change and `make lock` was not run."""
    locked = locked_versions(LOCK.read_text())
    with (ROOT / "pyproject.toml").open("rb") as f:
        requirements = image_requirements(tomllib.load(f))
    for requirement in requirements:
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{name} is not in deploy/requirements.lock: run `make lock`"
        version, hashes = locked[name]
        assert requirement.specifier.contains(version), f"{name}=={version} does not satisfy {requirement}"
        assert hashes > 0, f"{name} has no hash"
    # Neither the `local` extra's UI nor the test tools are in the image (FastAPI is: MLflow's).
    assert not {"dagster-webserver", "pytest", "moto"} & set(locked)


def test_lock_check_notices_a_stale_lock() -> None:
    pyproject = {
        "project": {"dependencies": ["dagster>=1.13,<1.14", "s3fs>=2024.1"]},
        "build-system": {"requires": ["setuptools>=69"]},
    }
    locked = locked_versions("dagster==1.12.0 \\\n    --hash=sha256:00\nsetuptools==80.0 \\\n    --hash=sha256:11\n")
    stale = [
        r.name
        for r in image_requirements(pyproject)
        if canonicalize_name(r.name) not in locked or not r.specifier.contains(locked[canonicalize_name(r.name)][0])
    ]
    assert stale == ["dagster", "s3fs"]


def test_dockerignore_lets_in_what_the_dockerfile_copies(dockerfile: str) -> None:
    """.dockerignore excludes everything, then lets in each path the image copies."""
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in lines
    for keyword, arguments in instructions(dockerfile):
        if keyword == "COPY":
            *sources, _destination = arguments.split()
            for source in sources:
                assert f"!{source}" in lines, f".dockerignore keeps {source} out of the build context"


# --- deploy/trainer.Dockerfile: the self-hosted trainer's GPU image ------------------------------
# Never built here (no container engine, no GPU); hadolint lints it and these tests read it.

TRAINER_DOCKERFILE = ROOT / "deploy" / "trainer.Dockerfile"
# What the trainer's image must not carry: the code location and the laptop-only packages.
NOT_IN_TRAINER_IMAGE = ("ftp_assets", "ftp_local_openai", "ftp_demo")


@pytest.fixture
def trainer_dockerfile() -> str:
    return TRAINER_DOCKERFILE.read_text()


def image_env(text: str) -> dict[str, str]:
    """KEY=value pairs of every ENV instruction (the `ENV KEY value` form is not used here)."""
    pairs = [pair for keyword, arguments in instructions(text) if keyword == "ENV" for pair in arguments.split()]
    assert all("=" in pair for pair in pairs), pairs
    return dict(pair.split("=", 1) for pair in pairs)


def copied_sources(text: str) -> list[str]:
    return [
        source
        for keyword, arguments in instructions(text)
        if keyword == "COPY"
        for source in arguments.split()[:-1]
        if not source.startswith("--")
    ]


def test_trainer_base_image_is_a_cuda_image_pinned_by_a_digest(trainer_dockerfile: str) -> None:
    images = base_images(trainer_dockerfile)
    assert images, "no FROM"
    for image in images:
        assert is_pinned_by_digest(image), image
        assert ":latest" not in image
        assert "cuda" in image, f"{image} is not a CUDA image"


def test_trainer_runs_as_a_numeric_non_root_user(trainer_dockerfile: str) -> None:
    users = [arguments for keyword, arguments in instructions(trainer_dockerfile) if keyword == "USER"]
    assert users, "no USER: the image runs as root"
    uid = users[-1].partition(":")[0]
    assert uid.isdigit() and int(uid) != 0, users[-1]


def test_trainer_pip_keeps_no_cache(trainer_dockerfile: str) -> None:
    installs = pip_installs(trainer_dockerfile)
    assert installs
    if image_env(trainer_dockerfile).get("PIP_NO_CACHE_DIR") != "1":
        assert all("--no-cache-dir" in command for command in installs)


def test_trainer_image_copies_the_trainer_and_not_the_product(trainer_dockerfile: str) -> None:
    sources = [source.rstrip("/") for source in copied_sources(trainer_dockerfile)]
    assert "ftp_trainer" in sources
    assert {"pyproject.toml", "README.md"} <= set(sources)
    for source in sources:
        assert source.split("/")[0] not in NOT_IN_TRAINER_IMAGE, source
        assert source not in {".", "./"}, "copies the whole build context"
    with (ROOT / "pyproject.toml").open("rb") as f:
        packages = tomllib.load(f)["tool"]["setuptools"]["packages"]["find"]["include"]
    assert {"ftp_trainer", "ftp_trainer.*"} <= set(packages), "setuptools would not install ftp_trainer"


def test_trainer_image_installs_the_trainers_own_dependency_set_only(trainer_dockerfile: str) -> None:
    """The `train` and `s3` extras' requirements, read from pyproject.toml, then the package without
    the project's own dependencies (Dagster, MLflow, ...), which the trainer never imports."""
    installs = pip_installs(trainer_dockerfile)
    assert any("-r requirements.txt" in command for command in installs), installs
    project = [command for command in installs if re.search(r"install\b.*\s\.(\s|$)", command)]
    assert project and all("--no-deps" in command for command in project), installs
    (extraction,) = [
        arguments
        for keyword, arguments in instructions(trainer_dockerfile)
        if keyword == "RUN" and "tomllib" in arguments
    ]
    assert re.findall(r'extras\["(\w+)"\]', extraction) == ["train", "s3"]
    with (ROOT / "pyproject.toml").open("rb") as f:
        optional = tomllib.load(f)["project"]["optional-dependencies"]
    train = {canonicalize_name(Requirement(spec).name) for spec in optional["train"]}
    assert {"torch", "transformers", "peft", "trl", "datasets", "dagster-pipes", "fsspec"} <= train
    assert not {"dagster", "mlflow", "ftp-assets"} & train


def test_trainer_image_never_downloads_from_the_hub(trainer_dockerfile: str) -> None:
    env = image_env(trainer_dockerfile)
    assert env["HF_HUB_OFFLINE"] == "1"
    assert env["TRANSFORMERS_OFFLINE"] == "1"
    assert env["HF_HOME"] == "/models/hf"


def test_trainer_image_names_its_command_without_an_entrypoint(trainer_dockerfile: str) -> None:
    """PipesK8sClient sets the container's command, which would replace an ENTRYPOINT anyway."""
    keywords = [keyword for keyword, _ in instructions(trainer_dockerfile)]
    assert "ENTRYPOINT" not in keywords
    (command,) = [arguments for keyword, arguments in instructions(trainer_dockerfile) if keyword == "CMD"]
    assert command.startswith('["ftp-train"')


def test_trainer_build_context_lets_in_what_the_trainer_dockerfile_copies(trainer_dockerfile: str) -> None:
    """BuildKit reads `<Dockerfile>.dockerignore` beside the Dockerfile before the root one."""
    own = TRAINER_DOCKERFILE.with_name(TRAINER_DOCKERFILE.name + ".dockerignore")
    lines = (own if own.exists() else ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in lines
    for source in copied_sources(trainer_dockerfile):
        assert f"!{source}" in lines, f"the build context keeps {source} out"
    for package in NOT_IN_TRAINER_IMAGE:
        assert f"!{package}" not in lines
