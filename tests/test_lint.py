"""ruff over the library, the autograder, the tests, the benchmarks and the tools (pyflakes, pycodestyle, bugbear)."""

import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def test_code_passes_ruff():
    ruff = Path(sys.executable).parent / "ruff"
    proc = subprocess.run([str(ruff), "check", "src", "autograder", "tests", "benchmarks", "tools"], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
