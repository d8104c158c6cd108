import os
import subprocess
import sys

from imgcls_utils.quiet_tensorflow import _stderr_filtered
from tests.conftest import REPO_ROOT


def test_known_startup_notices_are_dropped_and_real_errors_kept(capfd):
    with _stderr_filtered():
        os.write(2, b"I0000 00:00:1.0 1 port.cc:153] oneDNN custom operations are on.\n")
        os.write(2, b"E0000 00:00:1.0 1 something.cc:1] real failure: disk full\n")
    err = capfd.readouterr().err
    assert "real failure: disk full" in err and "oneDNN" not in err


def log_levels_after_import(*environments: dict) -> list[str]:
    """TF_CPP_MIN_LOG_LEVEL as a fresh Python process sees it after importing imgcls' TensorFlow,
    in one process per environment (run at once: each import takes seconds)."""
    code = "import os, imgcls_utils.quiet_tensorflow; print(os.environ['TF_CPP_MIN_LOG_LEVEL'])"
    processes = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=environment,
                                  cwd=REPO_ROOT) for environment in environments]
    levels = []
    for process in processes:
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
        levels.append(out.strip())
    return levels


def test_tensorflow_info_logs_are_off_by_default_unless_the_user_chose():
    unset = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    default, chosen = log_levels_after_import(unset, {**unset, "TF_CPP_MIN_LOG_LEVEL": "0"})
    assert default == "1"  # C++ INFO lines dropped, warnings kept
    assert chosen == "0"
