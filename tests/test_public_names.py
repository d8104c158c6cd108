"""``data_utils`` and ``model_utils`` are the library's public faces: every name they export is
used by the notebooks, the command line, the benchmarks or the tests, and those reach each such
name one way, through the face, never through the module it lives in."""

import ast
import importlib.util
import json

import pytest

from imgcls_utils import data_utils, model_utils
from tests.conftest import REPO_ROOT

FACADES = {"data_utils": data_utils, "model_utils": model_utils}
PUBLIC = {name: facade for facade, module in FACADES.items() for name in module.__all__}


def user_sources() -> dict[str, str]:
    """The code of everything outside the library that uses it."""
    files = [REPO_ROOT / "imgcls_utils" / "cli.py", *REPO_ROOT.glob("bench/*.py"),
             *REPO_ROOT.glob("tests/*.py")]
    sources = {path.name: path.read_text() for path in files if path.name != "test_public_names.py"}
    for notebook in REPO_ROOT.glob("notebooks/*.ipynb"):
        cells = json.loads(notebook.read_text())["cells"]
        sources[notebook.name] = "\n".join("".join(c["source"]) for c in cells
                                           if c["cell_type"] == "code")
    return sources


SOURCES = user_sources()


@pytest.mark.parametrize("facade", sorted(FACADES))
def test_every_exported_name_is_used_through_the_facade(facade):
    exported = FACADES[facade].__all__
    assert sorted(exported) == sorted(set(exported))
    unused = [name for name in exported
              if not any(f"{facade}.{name}" in text or _imports(text, facade, name)
                         for text in SOURCES.values())]
    assert unused == []


def _imports(text: str, facade: str, name: str) -> bool:
    """Whether ``text`` imports ``name`` from ``facade`` (absolutely, or relatively as cli.py)."""
    return any(isinstance(node, ast.ImportFrom)
               and (node.module, node.level) in {(f"imgcls_utils.{facade}", 0), (facade, 1)}
               and name in {alias.name for alias in node.names} for node in ast.walk(ast.parse(text)))


def test_public_names_are_reached_only_through_their_facade():
    detours = []
    for file, text in SOURCES.items():
        tree = ast.parse(text)
        modules = _imported_modules(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("imgcls_utils."):
                detours += [f"{file}: from {node.module} import {alias.name}"
                            for alias in node.names if alias.name in PUBLIC
                            and node.module.split(".", 1)[1] not in FACADES
                            and not _is_module(f"{node.module}.{alias.name}")]
            elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                  and node.value.id in modules and node.attr in PUBLIC):
                detours.append(f"{file}: {modules[node.value.id]}.{node.attr}")
    assert detours == []


def _imported_modules(tree: ast.AST) -> dict[str, str]:
    """``local name -> module`` for every module of the library (but the facades) that
    ``tree`` imports with ``from imgcls_utils[.<package>] import <module>``."""
    return {alias.asname or alias.name: f"{node.module}.{alias.name}"
            for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
            and (node.module or "").startswith("imgcls_utils")
            for alias in node.names if alias.name not in FACADES
            and _is_module(f"{node.module}.{alias.name}")}


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False
