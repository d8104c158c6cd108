"""environment.yml (conda users) must list exactly the dependencies of pyproject.toml."""

import tomllib

import yaml

from tests.conftest import REPO_ROOT


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    wanted = set(project["dependencies"]).union(*(extras[name] for name in ("dev", "serving", "scale")))
    env = yaml.safe_load((REPO_ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    listed = {d for d in pip_section if not d.startswith("-e")}
    assert listed == wanted, f"only in pyproject: {wanted - listed}; only in environment.yml: {listed - wanted}"
