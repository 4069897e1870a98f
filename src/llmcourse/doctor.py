"""Report what the course will run on: ``python -m llmcourse.doctor``.

Run after installing (``make install`` does it for you). It prints the Python,
PyTorch and device in use, and warns when the installed torch is a multi-GB
CUDA build on a machine that has no GPU to use it.
"""

from __future__ import annotations

import platform
import sys


def report() -> list[str]:
    """Return the lines of the environment report (nothing is printed)."""
    import torch

    from llmcourse.hardware import device

    lines = [
        f"python   {platform.python_version()} ({sys.executable})",
        f"torch    {torch.__version__} (CUDA build: {torch.version.cuda or 'no'})",
        f"device   {device()}",
    ]
    if torch.version.cuda and not torch.cuda.is_available():
        lines.append(
            "warning  this torch is a CUDA build but no GPU is visible; a CPU build is much "
            "smaller (see README, 'Installing on a laptop')"
        )
    return lines


def main() -> None:
    print("\n".join(report()))


if __name__ == "__main__":
    main()
