"""The image's requirements, from pyproject.toml: the base dependencies and the ``serving``
extra, TensorFlow as the distribution named by ``$TENSORFLOW`` (default ``tensorflow-cpu``: the
same version without the GPU kernels, 0.6 GB less).

``python requirements.py pyproject.toml`` prints one requirement a line; ``--no-deps`` prints
instead the ones to install without their dependencies: tensorflow-serving-api (its protos only)
requires the ``tensorflow`` distribution by name, which tensorflow-cpu is not.
"""

import os
import sys
import tomllib

TENSORFLOW = "tensorflow"
NEEDS_TENSORFLOW_BY_NAME = ("tensorflow-serving-api",)


def requirements(pyproject: dict, tensorflow: str) -> tuple[list[str], list[str]]:
    """``(with dependencies, without)``: the serving install's requirements."""
    project = pyproject["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["serving"]]
    renamed = [tensorflow + line[len(TENSORFLOW):] if name_of(line) == TENSORFLOW else line
               for line in wanted]
    alone = [line for line in renamed if name_of(line) in NEEDS_TENSORFLOW_BY_NAME]
    return [line for line in renamed if line not in alone], alone


def name_of(requirement: str) -> str:
    """The distribution name a requirement line starts with, lower case."""
    end = next((i for i, char in enumerate(requirement) if char in "<>=!~[;@ "), len(requirement))
    return requirement[:end].lower()


if __name__ == "__main__":
    with open(sys.argv[1], "rb") as file:
        with_deps, without = requirements(tomllib.load(file),
                                          os.environ.get("TENSORFLOW", "tensorflow-cpu"))
    print("\n".join(without if "--no-deps" in sys.argv else with_deps))
