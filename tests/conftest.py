"""Shared fixtures: a throwaway project root with the real config and small real images."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgcls_utils.config import CONFIG_RELATIVE_PATH, load_config

REPO_ROOT = Path(__file__).resolve().parent.parent
# A small CNN on 16x16 digits, in float32 so that batched and lone rows compare to 1e-5.
SERVED_RUN = {"data.image_size": [16, 16], "model.conv_filters": [8], "model.dense_units": 16,
              "train.epochs": 2, "train.min_steps_per_epoch": 10, "train.verbose": 0,
              "train.classical_baselines": False, "data.near_duplicate_distance": "none",
              "hardware.mixed_precision": "float32"}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project root in tmp_path holding a copy of the real Hyperparameters.yaml."""
    (tmp_path / "config").mkdir()
    shutil.copy(REPO_ROOT / CONFIG_RELATIVE_PATH, tmp_path / CONFIG_RELATIVE_PATH)
    return tmp_path


@pytest.fixture
def make_config(project: Path):
    """``make_config(**{"train.epochs": 2})`` -> a validated Config rooted at ``project``."""
    def make(**overrides):
        return load_config(project / CONFIG_RELATIVE_PATH, overrides=overrides)
    return make


def write_image(path: Path, size=(12, 10), mode="RGB", color=None, fmt=None, seed=0) -> Path:
    """Write a small real image of random pixels (or one ``color``) in the given mode/format."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if color is None:
        channels = {"L": 1, "RGB": 3, "RGBA": 4}.get(mode, 3)
        pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], channels), np.uint8)
        image = Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels)
    else:
        image = Image.new(mode, size, color)
    image.save(path, fmt)
    return path


def write_class_folder(root: Path) -> Path:
    """Three classes of 10 distinct small RGB PNGs each: ``root/<class>/<i>.png``."""
    for c, name in enumerate(["cat", "dog", "fox"]):
        for i in range(10):
            write_image(root / name / f"{i}.png", seed=100 * c + i)
    return root


@pytest.fixture
def class_folder(tmp_path: Path) -> Path:
    """``write_class_folder`` in ``tmp_path/images``."""
    return write_class_folder(tmp_path / "images")


def project_root(root: Path) -> Path:
    """``root`` made a project root: a copy of the real Hyperparameters.yaml in its config/."""
    (root / "config").mkdir()
    shutil.copy(REPO_ROOT / CONFIG_RELATIVE_PATH, root / CONFIG_RELATIVE_PATH)
    return root


@pytest.fixture(scope="session")
def served_model(tmp_path_factory):
    """``(project config, model folder, export version folder)`` of one small digits CNN,
    trained and exported once for every test that serves it. Read-only: copy the version
    folder before changing what is next to it."""
    from imgcls_utils import model_utils

    root = project_root(tmp_path_factory.mktemp("served_project"))
    cfg = load_config(root / CONFIG_RELATIVE_PATH, overrides=SERVED_RUN)
    folder = model_utils.train(cfg).model_folder
    version = model_utils.export_model(folder, cfg.path("exports_dir"))
    return cfg, folder, version.folder


def pytest_terminal_summary(terminalreporter):
    """The container tests' own time (they may add minutes to the suite) and their figures."""
    from tests.containers import summary_lines

    for line in summary_lines(terminalreporter.stats):
        terminalreporter.write_line(line)
