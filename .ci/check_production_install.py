"""Run inside a virtualenv holding the product as the production image installs it (no extras):
the code location loads, and nothing of the local service, the demo, the trainer or their web and
training stacks is part of the product. Exits non-zero with the reason on any failure."""

import subprocess
import sys
from importlib import metadata

from packaging.requirements import Requirement

LOCAL_ONLY = {"fastapi", "uvicorn", "starlette", "dagster-webserver"}
problems = []

import ftp_assets.definitions  # noqa: E402  (loading the code location is the check)

loaded = set(sys.modules)
assets = sorted(key.to_user_string() for key in ftp_assets.definitions.defs.resolve_asset_graph().get_all_asset_keys())
print(f"ftp_assets.definitions loads: {len(assets)} assets ({', '.join(assets)})")
# fastapi is not in this list: `import mlflow` loads it (mlflow.genai imports mlflow.gateway); that
# the product itself never imports FastAPI or uvicorn is import-linter's contract (make check).
for module in ("uvicorn", "ftp_local_openai", "ftp_demo"):
    if module in loaded:
        problems.append(f"loading the code location imported {module}")

product_requirements = [Requirement(line) for line in metadata.requires("ftp_assets") or []]
unconditional = {requirement.name.lower() for requirement in product_requirements if requirement.marker is None}
for name in sorted(LOCAL_ONLY & unconditional):
    problems.append(f"the product requires {name}, which belongs to the local extra")

# The trainer and its training stack live in their own image (deploy/trainer.Dockerfile).
for module in ("ftp_local_openai", "ftp_demo", "ftp_trainer", "torch", "transformers", "peft", "trl"):
    try:
        __import__(module)
        problems.append(f"{module} is installed with the product")
    except ModuleNotFoundError:
        pass
print("no training library is installed with the product (torch, transformers, peft, trl, ftp_trainer)")

demo = subprocess.run(["ftp-assets", "demo"], capture_output=True, text=True)
if demo.returncode == 0 or "pip install -e '.[local]'" not in demo.stderr:
    problems.append(f"`ftp-assets demo` without the local extra did not say how to install it: {demo.stderr.strip()!r}")
else:
    print(f"ftp-assets demo without the extra: {demo.stderr.strip()}")

# MLflow's client package (mlflow-skinny) depends on FastAPI and uvicorn for its own server, so
# they are in the image through MLflow, not through anything of ours: say so.
for name in ("fastapi", "uvicorn"):
    try:
        version = metadata.version(name)
    except metadata.PackageNotFoundError:
        print(f"{name}: not installed")
        continue
    requirers = sorted(
        dist.metadata["Name"]
        for dist in metadata.distributions()
        for requirement in map(Requirement, dist.requires or [])
        if requirement.name.lower() == name and requirement.marker is None
    )
    print(f"{name} {version}: installed only as a dependency of {', '.join(requirers)}")
    if "ftp_assets" in requirers or "ftp-assets" in requirers:
        problems.append(f"ftp_assets requires {name}")

if problems:
    sys.exit("Production install check failed:\n- " + "\n- ".join(problems))
print("Production install check passed.")
