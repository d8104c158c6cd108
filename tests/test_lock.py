"""requirements.lock (what `make` installs) must hold every dependency of pyproject.toml, each at
a version its range allows, and environment.yml (conda users) must be what `make lock` writes
from it. After changing pyproject.toml's dependencies, `make lock` refreshes both."""

import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import REPO_ROOT
from tools.environment_yml import environment_yml, locked_requirements

LOCK = (REPO_ROOT / "requirements.lock").read_text()


def pyproject_requirements() -> list[Requirement]:
    """The dependencies and those of every extra (imgcls' own extras excepted)."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    listed = project["dependencies"] + [requirement for extra in
                                        project.get("optional-dependencies", {}).values()
                                        for requirement in extra]
    return [Requirement(line) for line in listed
            if canonicalize_name(Requirement(line).name) != canonicalize_name(project["name"])]


def locked_versions() -> dict[str, set[str]]:
    """Each locked package's versions (one, or one per Python version range)."""
    versions: dict[str, set[str]] = {}
    for line in locked_requirements(LOCK):
        requirement = Requirement(line)
        versions.setdefault(canonicalize_name(requirement.name), set()).add(
            str(requirement.specifier).removeprefix("=="))
    return versions


@pytest.mark.parametrize("requirement", pyproject_requirements(), ids=str)
def test_the_lock_pins_every_dependency_within_its_range(requirement):
    locked = locked_versions().get(canonicalize_name(requirement.name))
    assert locked, f"{requirement.name} is not in requirements.lock: run make lock"
    outside = {version for version in locked if not requirement.specifier.contains(version)}
    assert not outside, (f"requirements.lock pins {requirement.name} {sorted(outside)}, outside "
                         f"pyproject.toml's {requirement}: run make lock")


def test_every_locked_package_has_hashes():
    blocks = LOCK.split("\n")
    pins = [index for index, line in enumerate(blocks) if "==" in line and not line.startswith(" ")
            and not line.startswith("#")]
    assert pins and all(blocks[index].rstrip().endswith("\\") and "--hash=sha256:" in
                        blocks[index + 1] for index in pins)


def test_environment_yml_is_generated_from_the_lock():
    assert (REPO_ROOT / "environment.yml").read_text() == environment_yml(LOCK), \
        "environment.yml is not what the lock gives: run make lock"


def test_the_lock_parser_reads_markers_and_skips_hashes_and_comments():
    text = ("# header\nabc==1.0 \\\n    --hash=sha256:00\n    # via x\n"
            "def-g==2.1 ; python_full_version < '3.11' \\\n    --hash=sha256:11\n")
    assert locked_requirements(text) == ["abc==1.0", "def-g==2.1 ; python_full_version < '3.11'"]
