# The self-hosted trainer's GPU image: `ftp-train` (ftp_trainer/), which Dagster runs as a pod of
# its own through Pipes (dagster_k8s.PipesK8sClient; docs/kubernetes.md#self-hosted-training). It
# carries the trainer alone, never the code location: ftp_assets/ is not copied. Build from the
# repository root, with the base image's digest:
#   docker build -f deploy/trainer.Dockerfile --platform linux/amd64 \
#     --build-arg PYTORCH_DIGEST=sha256:<digest> -t <registry>/ftp-trainer:<tag> .
# PYTORCH_DIGEST has no default: without it the FROM reference is invalid and the build stops, so
# a release never builds on whatever the tag points at that day. The base is PyTorch's official
# CUDA runtime image: its CUDA build of torch satisfies the `train` extra's range, so pip keeps it;
# its Python must be one pyproject.toml's requires-python admits (3.11 or 3.12), or pip refuses.
# This image has never been built here: these machines have no container engine and no GPU.
ARG PYTORCH_IMAGE=pytorch/pytorch:2.7.1-cuda12.8-cudnn9-runtime
ARG PYTORCH_DIGEST
FROM ${PYTORCH_IMAGE}@${PYTORCH_DIGEST}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /build

# The trainer and its own dependency set only: the `train` extra (torch, transformers, peft, trl,
# datasets, dagster-pipes, fsspec) and the `s3` extra (s3fs: datasets and adapters on
# FTP_STORAGE_URL), read from pyproject.toml, then ftp_trainer without the project's own
# dependencies (Dagster, MLflow, ...), which the trainer never imports. The project's other
# console script, ftp-assets, is installed too but cannot run here (its package is not copied). Resolved from pyproject.toml,
# not from a hashed lock: deploy/requirements.lock covers the code location's image only.
COPY pyproject.toml README.md ./
COPY ftp_trainer ./ftp_trainer
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN python -c 'import tomllib; extras = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]; print(*extras["train"], *extras["s3"], sep="\n")' > requirements.txt \
    && pip install -r requirements.txt \
    && pip install --no-deps . \
    && rm -rf /build

# No download at run time: the base model and tokenizer come from the model cache volume, which
# the pod mounts read-only at /models (HF_HOME). The root filesystem is read-only in the cluster,
# so every cache the libraries write goes to /tmp, an emptyDir of the pod. Checkpoints go to the
# work volume at /var/lib/ftp-trainer (FTP_TRAINER_WORK_DIR), so a crashed attempt resumes.
ENV HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_DATASETS_OFFLINE=1 \
    HF_HOME=/models/hf \
    HF_DATASETS_CACHE=/tmp/hf-datasets \
    HF_MODULES_CACHE=/tmp/hf-modules \
    XDG_CACHE_HOME=/tmp/cache \
    TRITON_CACHE_DIR=/tmp/triton \
    MPLCONFIGDIR=/tmp/matplotlib

# A numeric non-root user, so Kubernetes can verify `runAsNonRoot`; the same uid as the code
# location's image and every pod of the release (helm-values.yaml).
RUN groupadd --gid 10001 ftp \
    && useradd --uid 10001 --gid 10001 --home-dir /var/lib/ftp-trainer --no-create-home --shell /usr/sbin/nologin ftp \
    && mkdir -p /var/lib/ftp-trainer /models \
    && chown 10001:10001 /var/lib/ftp-trainer
USER 10001:10001
WORKDIR /var/lib/ftp-trainer

# No ENTRYPOINT: PipesK8sClient.run(command=[...]) sets the container's command, which would
# replace an ENTRYPOINT anyway, so the launcher passes the whole `ftp-train ...` command line.
# This default is only for running the image by hand.
CMD ["ftp-train", "--help"]
