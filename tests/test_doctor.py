"""`python -m llmcourse.doctor`: the environment report appendix B shows."""

from __future__ import annotations

import subprocess
import sys

import torch

from llmcourse import doctor


def test_report_names_python_torch_device_cpu_and_memory():
    lines = doctor.report(packages=False, checkpoints=False)
    heads = [line.split()[0] for line in lines]
    assert heads[:5] == ["python", "torch", "device", "cpu", "memory"]
    assert torch.__version__ in lines[1]
    assert f"torch uses {torch.get_num_threads()} threads" in lines[3]


def test_report_lists_every_compared_library_with_its_installed_version():
    from importlib import metadata

    lines = [line for line in doctor.report(checkpoints=False) if line.startswith("package")]
    assert len(lines) == len(doctor.PACKAGES)
    for name, line in zip(doctor.PACKAGES, lines):
        assert line == f"package  {name} {metadata.version(name)}"


def test_report_verifies_every_shipped_checkpoint():
    from llmcourse.pretrained import CHECKPOINTS

    shipped = {p.name for p in CHECKPOINTS.iterdir() if (p / "recipe.json").is_file()}
    lines = [line for line in doctor.report(packages=False) if line.startswith(("model", "warning  checkpoint"))]
    assert {"base", "sft"} <= shipped
    assert len(lines) == len(shipped)
    assert all("SHA-256 verified" in line for line in lines), lines


def test_a_damaged_checkpoint_is_reported_not_raised(monkeypatch):
    from llmcourse import pretrained

    def broken(filename, name="base"):
        raise ValueError(f"{filename} has SHA-256 0000")

    monkeypatch.setattr(pretrained, "checkpoint_file", broken)
    lines = doctor.report(packages=False)
    assert any(line.startswith("warning  checkpoint 'base'") and "SHA-256 0000" in line for line in lines)


def test_doctor_runs_as_a_command():
    out = subprocess.run([sys.executable, "-m", "llmcourse.doctor"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("python   ")
    assert "package  peft " in out.stdout
