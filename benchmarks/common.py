"""What every benchmark records next to its numbers: machine, versions, commit."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"


def environment() -> dict:
    import torch

    from llmcourse.hardware import device

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": commit,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(device()),
    }


def write(name: str, results: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"environment": environment(), "results": results}, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    print(f"wrote {path}")
    return path


def venv_env() -> dict:
    bindir = str(Path(sys.executable).parent)
    return dict(os.environ, PATH=os.pathsep.join([bindir, os.environ.get("PATH", "")]))
