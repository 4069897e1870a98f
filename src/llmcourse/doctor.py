"""Report what the course will run on: ``python -m llmcourse.doctor``.

Run after installing (``make install`` does it for you). It prints the Python,
PyTorch and device in use, the CPU, memory and any GPU, the versions of the
libraries the chapters compare against, and whether the shipped checkpoints
are intact. It warns when the installed torch is a multi-GB CUDA build on a
machine that has no GPU to use it. Appendix B (book/appendix-b-hardware)
shows and explains its output.
"""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata

#: The libraries whose versions matter to the book's comparisons, in the order the chapters meet them.
PACKAGES = ("numpy", "scikit-learn", "transformers", "tokenizers", "safetensors", "faiss-cpu", "trl",
            "peft", "bitsandbytes", "gguf", "torchmetrics", "diffusers", "nbgrader", "jupyter-book")


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return None


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _checkpoints() -> list[str]:
    from llmcourse.pretrained import CHECKPOINTS, checkpoint_file, recipe

    lines = []
    for name in sorted(p.name for p in CHECKPOINTS.iterdir() if (p / "recipe.json").is_file()):
        try:
            for filename in recipe(name)["sha256"]:
                checkpoint_file(filename, name)  # checks the SHA-256 recorded by the recipe
            size = recipe(name).get("parameters")
            lines.append(f"model    {name}: " + (f"{size:,} parameters, " if size else "") + "SHA-256 verified")
        except Exception as err:  # a missing or modified checkpoint is reported, not raised
            lines.append(f"warning  checkpoint {name!r}: {err}")
    return lines


def report(*, packages: bool = True, checkpoints: bool = True) -> list[str]:
    """Return the lines of the environment report (nothing is printed).

    ``packages=False`` leaves out the library versions, ``checkpoints=False`` the check of the
    shipped models (which reads and hashes them, a few milliseconds each).
    """
    import torch

    from llmcourse.hardware import device

    memory = _memory_gib()
    lines = [
        f"python   {platform.python_version()} ({sys.executable})",
        f"torch    {torch.__version__} (CUDA build: {torch.version.cuda or 'no'})",
        f"device   {device()}",
        f"cpu      {_cpu_name()}, {os.cpu_count()} logical cores, torch uses {torch.get_num_threads()} threads",
        f"memory   {memory:.1f} GiB" if memory is not None else "memory   unknown",
    ]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            lines.append(f"gpu {i}    {p.name}, {p.total_memory / 2**30:.1f} GiB, compute capability "
                         f"{p.major}.{p.minor}, bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'}")
    if torch.version.cuda and not torch.cuda.is_available():
        lines.append(
            "warning  this torch is a CUDA build but no GPU is visible; a CPU build is much "
            "smaller (see README, 'Installing on a laptop')"
        )
    if packages:
        lines += [f"package  {name} {_version(name)}" for name in PACKAGES]
    if checkpoints:
        lines += _checkpoints()
    return lines


def main() -> None:
    print("\n".join(report()))


if __name__ == "__main__":
    main()
