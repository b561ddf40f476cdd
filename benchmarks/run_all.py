"""Runs every benchmark in turn (``make benchmark``); each prints its own figures."""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = ["data_path.py", "sensor.py", "ab_simulation.py", "trainer.py", "serving.py"]

if __name__ == "__main__":
    failed = []
    for name in BENCHMARKS:
        print(f"\n######## {name}", flush=True)
        if subprocess.run([sys.executable, str(HERE / name), *sys.argv[1:]]).returncode:
            failed.append(name)
    sys.exit(f"failed: {', '.join(failed)}" if failed else 0)
