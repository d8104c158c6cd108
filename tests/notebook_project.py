"""pytest plugin (see pyproject.toml): nbval runs the committed notebooks in a scratch copy of
the project, so `make test` leaves Raw_Data, Processed_Data and Trained_Models as it found them.

nbval starts a notebook's kernel when the notebook's first cell is set up, and the kernel
inherits this process's environment: there ``$IMGCLS_CONFIG`` names the scratch copy's config,
which the notebooks load. Every other test finds its config from its working folder.
"""

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from imgcls_utils.config import CONFIG_RELATIVE_PATH, CONFIG_VARIABLE

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRATCH = Path(tempfile.mkdtemp(prefix="imgcls-nbval-"))


def pytest_configure(config):
    (SCRATCH / "config").mkdir(exist_ok=True)
    shutil.copy(REPO_ROOT / CONFIG_RELATIVE_PATH, SCRATCH / CONFIG_RELATIVE_PATH)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    if item.path.suffix == ".ipynb":
        os.environ[CONFIG_VARIABLE] = str(SCRATCH / CONFIG_RELATIVE_PATH)
    else:
        os.environ.pop(CONFIG_VARIABLE, None)


def pytest_unconfigure(config):
    shutil.rmtree(SCRATCH, ignore_errors=True)
