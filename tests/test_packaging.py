"""The package as pip installs it from a wheel (not from this checkout): every subpackage and
the web page's data are in it, and ``imgcls serve`` from it finds its page."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO_ROOT
from tests.live_server import live_server

STAGES = ("data", "training", "evaluation", "serving", "experiments")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> tuple[Path, str]:
    """The project's wheel, built from a copy of its sources, and pip's output building it."""
    source = tmp_path_factory.mktemp("source")
    shutil.copytree(REPO_ROOT / "imgcls_utils", source / "imgcls_utils",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, source / name)
    out = tmp_path_factory.mktemp("wheel")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(out),
                            str(source)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    return next(out.glob("imgcls-*.whl")), built.stdout + built.stderr


def test_the_wheel_holds_every_subpackage_and_the_page_without_a_packaging_warning(wheel):
    path, output = wheel
    names = zipfile.ZipFile(path).namelist()
    for stage in STAGES:
        assert f"imgcls_utils/{stage}/__init__.py" in names
    assert "imgcls_utils/serving/web/index.html" in names
    expected = {p.relative_to(REPO_ROOT).as_posix()
                for p in (REPO_ROOT / "imgcls_utils").rglob("*.py")}
    assert expected <= set(names)
    assert "absent from the `packages` configuration" not in output


def test_imgcls_serve_installed_from_the_wheel_finds_its_page(wheel, served_model, tmp_path):
    cfg, _, export = served_model
    target = tmp_path / "installed"
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--quiet",
                                "--target", str(target), str(wheel[0])],
                               capture_output=True, text=True, timeout=600)
    assert installed.returncode == 0, installed.stderr[-3000:]
    env = {**os.environ, "PYTHONPATH": str(target)}
    where = subprocess.run([sys.executable, "-c", "import imgcls_utils; print(imgcls_utils.__file__)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert Path(where.stdout.strip()).is_relative_to(target), where.stderr[-2000:]
    config = cfg.root / "config" / "Hyperparameters.yaml"
    with live_server(export.parent, config, tmp_path / "serve.log",
                     imgcls=(str(target / "bin" / "imgcls"),), cwd=tmp_path, env=env) as server:
        page = httpx.get(f"{server.url}/")
    assert page.status_code == 200 and "<html" in page.text.lower()
    assert export.parent.name in page.text


# What pyproject's notebooks extra brings (and scikit-learn's scipy, ipykernel's IPython): the
# base install, which the serving image holds, has none of them.
NOTEBOOKS_EXTRA_MODULES = ("pandas", "sklearn", "scipy", "matplotlib", "seaborn", "tqdm",
                           "papermill", "ipykernel", "IPython", "tensorflow_datasets",
                           "tensorboard")
BLOCKER = f"""\
import sys
BLOCKED = {NOTEBOOKS_EXTRA_MODULES!r}
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{{name}} is in the notebooks extra, not the base install")
sys.meta_path.insert(0, Blocker())
"""


def test_serve_predict_and_export_need_the_base_install_only(served_model, tmp_path):
    """`imgcls export --no-tflite`, `predict` and `serve` with every module of the notebooks
    extra unimportable (a sitecustomize blocks them in the subprocesses)."""
    cfg, folder, _ = served_model
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(BLOCKER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), str(REPO_ROOT)])}
    imgcls = [sys.executable, "-m", "imgcls_utils.cli"]
    config = cfg.root / "config" / "Hyperparameters.yaml"
    blocked = subprocess.run([sys.executable, "-c", "import pandas"], env=env,
                             capture_output=True, text=True, timeout=60)
    assert "in the notebooks extra" in blocked.stderr  # the blocker works
    exported = subprocess.run([*imgcls, "export", str(folder), "--no-tflite", "--config",
                               str(config), "--set", f"paths.exports_dir={tmp_path / 'exports'}"],
                              env=env, capture_output=True, text=True, timeout=600)
    assert exported.returncode == 0, exported.stderr[-3000:]
    export = tmp_path / "exports" / "digits_cnn"
    digits = sorted((cfg.path("raw_dir") / "digits").glob("*/*.png"))[:3]
    predicted = subprocess.run([*imgcls, "predict", str(export), *map(str, digits)], env=env,
                               capture_output=True, text=True, timeout=600)
    assert predicted.returncode == 0 and len(predicted.stdout.splitlines()) == 3, \
        predicted.stderr[-3000:]
    with live_server(export, config, tmp_path / "serve.log", env=env) as server:
        answer = httpx.post(f"{server.url}/predict", files={"file": ("d.png",
                                                                      digits[0].read_bytes())})
    assert answer.status_code == 200 and answer.json()["predictions"]
