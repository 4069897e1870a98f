"""The set-up promises of the README hold: pinned, consistent, and wired to CI."""

from __future__ import annotations

import re

import tomllib
import yaml

from tests.conftest import REPO


def _pins(requirements) -> dict[str, str]:
    out = {}
    for req in requirements:
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==([^\s;]+)", req.strip())
        if m:
            out[m.group(1).lower()] = m.group(2)
    return out


def _pyproject_pins() -> dict[str, str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for items in project["optional-dependencies"].values():
        reqs += [r for r in items if not r.startswith("llmcourse")]
    return _pins(reqs)


def test_every_direct_dependency_is_pinned_and_torch_is_2_13():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for req in project["dependencies"]:
        assert "==" in req, f"{req} is not pinned"
    assert _pyproject_pins()["torch"] == "2.13.0"


def test_environment_yml_pins_match_pyproject():
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip_section = next(d for d in env["dependencies"] if isinstance(d, dict))["pip"]
    assert _pins(pip_section) == _pyproject_pins()


def test_constraints_agree_with_pyproject():
    constraints = _pins((REPO / "requirements" / "constraints.txt").read_text().splitlines())
    for name, version in _pyproject_pins().items():
        assert constraints.get(name) == version, f"constraints.txt pins {name}=={constraints.get(name)}, pyproject {version}"


def test_readme_states_the_two_commands_and_ci_runs_the_test_one():
    readme = (REPO / "README.md").read_text()
    head = readme[: readme.index("## For students")]
    assert "make book" in head and "make test" in head
    assert "make test" in (REPO / ".ci" / "run").read_text()
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^book:", makefile, re.M) and re.search(r"^test:", makefile, re.M)


def test_book_config_executes_with_cache_and_renders_math_offline():
    config = yaml.safe_load((REPO / "_config.yml").read_text())
    assert config["execute"]["execute_notebooks"] == "cache"
    assert "sphinx-mathjax-offline" in config["sphinx"]["extra_extensions"]
