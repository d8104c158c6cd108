"""The Makefile's helper targets: `make lab` starts as root too, `make clean-generated` deletes
everything derived and nothing else."""

import os
import shutil
import signal
import socket
import subprocess
import time

from tests.conftest import REPO_ROOT


def test_clean_generated_removes_every_derived_file_and_keeps_inputs(tmp_path):
    shutil.copy(REPO_ROOT / "Makefile", tmp_path / "Makefile")
    derived = ["data/Processed_Data/digits/split.csv", "data/Processed_Data/digits.manifest/part-0-all.arrow",
               "data/Raw_Data/digits/.imgcls-source.json", "data/Raw_Data/digits/0/0000.png",
               "data/Raw_Data/.digits.lock", "data/Processed_Data/.digits-8x8x1-0a1b2c3d.lock",
               "runs/20261123-091346/config.yaml"]
    kept = ["data/Processed_Data/README.md", "data/Raw_Data/README.md",
            "data/Raw_Data/my_photos/cat/1.png", "Trained_Models/digits_cnn_1/model.keras"]
    for name in derived + kept:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    done = subprocess.run(["make", "clean-generated"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    left = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert left == sorted(["Makefile", *kept])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_make_lab_starts_jupyterlab_even_as_root():
    port = free_port()
    lab = subprocess.Popen(["make", "lab"], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, start_new_session=True,
                           env={**os.environ, "JUPYTER_PORT": str(port), "BROWSER": "true"})
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and lab.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        assert lab.poll() is None, lab.stdout.read()
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    finally:
        os.killpg(lab.pid, signal.SIGTERM)
        lab.wait(timeout=30)


def test_make_test_goes_on_when_it_cannot_install_the_browser_nginx_and_podman(tmp_path):
    """Without the packages and without apt-get, the target says which tests will be skipped
    and succeeds, so `make test` still runs the rest."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "id").symlink_to(shutil.which("id"))
    done = subprocess.run(["make", "-f", str(REPO_ROOT / "Makefile"), "system-packages"],
                          cwd=tmp_path, capture_output=True, text=True,
                          env={"PATH": str(bin_dir)}, executable=shutil.which("make"))
    assert done.returncode == 0, done.stderr
    assert "the browser, nginx, container and Prometheus tests will be skipped" in done.stdout
