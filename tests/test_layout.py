"""The package's layout is its architecture: stages as subpackages, small modules, imports that
only flow one way, the serving extras needed by serving alone, and old import paths that still
work while saying where their modules went."""

import ast
import importlib
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import imgcls_utils
from tests.conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "imgcls_utils"
STAGES = ("data", "training", "evaluation", "serving", "experiments")
MAX_LINES = 400
MAX_TOP_LEVEL_MODULES = 10
# The serving extras (pyproject's [serving]): only imgcls_utils.serving may need them.
SERVING_EXTRAS = ("fastapi", "starlette", "uvicorn", "prometheus_client", "tensorflow_serving",
                  "ai_edge_litert", "multipart", "httpx")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def test_the_stages_are_subpackages_with_a_docstring_saying_their_job():
    for stage in (None, *STAGES):
        module = importlib.import_module(f"imgcls_utils.{stage}" if stage else "imgcls_utils")
        assert module.__doc__ and len(module.__doc__.split()) > 20, stage
    assert sorted(path.name for path in PACKAGE.iterdir()
                  if path.is_dir() and (path / "__init__.py").is_file()) == sorted(STAGES)


def test_modules_are_small_and_few_at_the_top():
    long = {name: lines for name, path in MODULES.items()
            if (lines := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}
    assert len(list(PACKAGE.glob("*.py"))) <= MAX_TOP_LEVEL_MODULES


def imported_modules(name: str, path: Path) -> set[str]:
    """The library modules that module ``name`` imports, at its top or inside functions."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = (node.module or "") if not node.level else ".".join(
                [*package.split(".")[:len(package.split(".")) - node.level + 1],
                 *([node.module] if node.module else [])])
            for alias in node.names:
                target = f"{base}.{alias.name}"
                found.add(target if target in MODULES else base)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {target for target in found if target in MODULES and target != name}


def test_no_import_cycles():
    """Imports go one way (a package's ``__init__`` holds no code that imports its modules)."""
    graph = {name: imported_modules(name, path) for name, path in MODULES.items()
             if path.name != "__init__.py"}
    state: dict[str, str] = {}
    cycles = []

    def visit(name: str, trail: list[str]) -> None:
        state[name] = "open"
        for target in sorted(graph.get(name, ())):
            if state.get(target) == "open":
                cycles.append(" -> ".join(trail[trail.index(target):] + [target]))
            elif target not in state:
                visit(target, trail + [target])
        state[name] = "done"

    for name in graph:
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_everything_but_the_server_imports_without_the_serving_extras():
    """The rest of the library (and export, prediction and TensorFlow Lite) never pulls in the
    web stack: an import of any serving extra fails in this subprocess."""
    server = {"app", "batching", "middleware", "monitoring", "run", "versions", "settings",
              "rest_api", "grpc_api", "whole_responses"}
    names = [name for name in MODULES if not (name.startswith("imgcls_utils.serving.")
                                              and name.rsplit(".", 1)[1] in server)]
    script = (
        "import importlib, sys\n"
        f"blocked = {SERVING_EXTRAS!r}\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in blocked:\n"
        "            raise ImportError(f'{name} is a serving extra')\n"
        "sys.meta_path.insert(0, Block())\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
        "print('imported', len(sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def test_the_server_modules_do_need_the_extras():
    """The check above can fail: the app itself imports FastAPI."""
    tree = ast.parse((PACKAGE / "serving" / "app.py").read_text())
    assert "fastapi" in {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}


@pytest.mark.parametrize("old", sorted(imgcls_utils.MOVED_MODULES))
def test_old_module_names_keep_working_and_name_the_new_one(old):
    new = imgcls_utils.MOVED_MODULES[old]
    sys.modules.pop(old, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(old)
    assert module is importlib.import_module(new)
    assert any(issubclass(w.category, FutureWarning) and new in str(w.message) for w in caught)


def test_old_names_in_the_notebooks_keep_working_and_name_the_new_ones():
    from imgcls_utils import data_utils, evaluation, model_utils

    with pytest.warns(FutureWarning, match="data_utils.process_data"):
        assert data_utils.prepare_data is data_utils.process_data
    with pytest.warns(FutureWarning, match="imgcls_utils.evaluation.metrics.top_losses"):
        assert getattr(evaluation, "top_losses") is model_utils.top_losses  # the old module's name
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        evaluation.nothing
    assert model_utils.TrainingRun.RENAMED == {"prepare_data": "process_data", "prepared": "processed"}


def test_the_readme_layout_names_every_module_with_its_job():
    layout = (REPO_ROOT / "README.md").read_text().split("## Layout", 1)[1].split("\n## ", 1)[0]
    missing = [name for name, path in MODULES.items() if path.name != "__init__.py"
               and f"{path.stem}" not in layout]
    assert missing == []
    assert all(f"{stage}/" in layout for stage in STAGES)
