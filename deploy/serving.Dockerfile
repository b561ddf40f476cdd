# The self-hosted adapters' serving image: the official vLLM OpenAI-compatible server plus our LoRA
# resolver plugin, ftp_serving (entry point `ftp_adapter_resolver` of the group
# vllm.general_plugins), which finds, checks and loads an adapter the first time a request names
# it. The Deployment of deploy/serving/vllm.yaml runs it; docs/serving.md. Build from the
# repository root, with the base image's digest:
#   docker build -f deploy/serving.Dockerfile --platform linux/amd64 \
#     --build-arg VLLM_DIGEST=sha256:<digest> -t <registry>/ftp-vllm:<tag> .
# VLLM_DIGEST has no default: without it the FROM reference is invalid and the build stops, so a
# release never builds on whatever the tag points at that day. The base's Python must be one that
# pyproject.toml's requires-python admits (3.11 or 3.12), or pip refuses the project.
# This image has never been built here: these machines have no container engine and no GPU.
ARG VLLM_IMAGE=vllm/vllm-openai:v0.33.0
ARG VLLM_DIGEST
FROM ${VLLM_IMAGE}@${VLLM_DIGEST}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /build

# ftp_serving alone: not the code location, the trainer nor the `serve` extra (torch, transformers,
# peft, fastapi, uvicorn are the CPU server's; vLLM brings its own torch and transformers). First the
# `s3` extra's requirements read from pyproject.toml (s3fs, which brings fsspec: the resolver reads
# an fsspec root such as s3://...), held to the vLLM, torch and transformers versions the base
# ships, so pip fails rather than replace them; then the project with --no-deps. Its console
# scripts (ftp-assets, ftp-train, ftp-serve) are installed too but cannot run here. The last
# command fails the build when the plugin's entry point is not installed.
COPY pyproject.toml README.md ./
COPY ftp_serving ./ftp_serving
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN python3 -c 'import tomllib; extras = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]; print(*extras["s3"], sep="\n")' > requirements.txt \
    && python3 -m pip freeze | grep -iE '^(vllm|torch|transformers)==' > constraints.txt \
    && python3 -m pip install -r requirements.txt -c constraints.txt \
    && python3 -m pip install --no-deps . \
    && python3 -c 'from importlib.metadata import entry_points; found = {e.name: e.value for e in entry_points(group="vllm.general_plugins")}; assert found.get("ftp_adapter_resolver") == "ftp_serving.vllm_plugin:register", found' \
    && rm -rf /build

# No download at run time: the base model comes from the model cache volume, mounted read-only at
# /models (HF_HOME). The root filesystem is read-only in the cluster, so every cache vLLM, torch,
# Triton and FlashInfer write goes to /tmp, an emptyDir of the pod (HOME too: some write under ~).
ENV HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_HOME=/models/hf \
    HOME=/tmp/home \
    XDG_CACHE_HOME=/tmp/cache \
    XDG_CONFIG_HOME=/tmp/config \
    VLLM_CACHE_ROOT=/tmp/vllm-cache \
    VLLM_CONFIG_ROOT=/tmp/vllm-config \
    TRITON_CACHE_DIR=/tmp/triton \
    FTP_ADAPTER_CACHE_DIR=/tmp/ftp-adapters \
    VLLM_NO_USAGE_STATS=1 \
    DO_NOT_TRACK=1

# A numeric non-root user, so Kubernetes can verify `runAsNonRoot`; the same uid as the release's
# other images and pods.
RUN groupadd --gid 10001 ftp \
    && useradd --uid 10001 --gid 10001 --home-dir /tmp/home --no-create-home --shell /usr/sbin/nologin ftp \
    && mkdir -p /models /adapters
USER 10001:10001
WORKDIR /tmp

# The server itself; the Deployment names the same command and passes the model and flags as
# arguments (never `serve` again).
EXPOSE 8000
ENTRYPOINT ["vllm", "serve"]
