"""A real ``imgcls serve`` in a subprocess on a free loopback port, for the tests that need a
server over HTTP (the server's own tests, the web page in a browser, replicas behind nginx)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import httpx

from imgcls_utils.config import CONFIG_RELATIVE_PATH
from tests.conftest import REPO_ROOT


@dataclass
class LiveServer:
    url: str
    process: subprocess.Popen
    log: Path


@contextmanager
def live_server(export: Path, config: Path, log: Path, *set_options: str,
                imgcls: tuple[str, ...] = (sys.executable, "-m", "imgcls_utils.cli"),
                cwd: Path = REPO_ROOT, env: dict | None = None) -> Iterator[LiveServer]:
    """``imgcls serve export --config config --set ...`` until the block ends, once /healthz
    answers 200; its stderr (one JSON line per request) goes to ``log``. ``imgcls``: the
    command that runs imgcls (default: this project's, in this Python)."""
    command = [*imgcls, "serve", str(export), "--port", "0", "--config", str(config)]
    for option in set_options:
        command += ["--set", option]
    with open(log, "w") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True,
                                   cwd=cwd, env=env)
    try:
        line = process.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+", line)
        assert url, line + log.read_text()[-2000:]
        deadline = time.monotonic() + 60
        while httpx.get(f"{url[0]}/healthz").status_code != 200:
            assert time.monotonic() < deadline and process.poll() is None, log.read_text()[-2000:]
            time.sleep(0.1)
        yield LiveServer(url[0], process, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


@contextmanager
def two_replicas(served_model, folder: Path, env: dict | None = None) -> Iterator[list[str]]:
    """Two ``imgcls serve`` replicas of the shared export (copied into ``folder``) on loopback,
    as nginx or Prometheus reach them: ``["127.0.0.1:port", ...]``."""
    cfg, _, version = served_model
    export = folder / "exports" / version.parent.name
    shutil.copytree(version, export / "1")
    config = cfg.root / CONFIG_RELATIVE_PATH
    with live_server(export, config, folder / "a.log", env=env) as first, \
            live_server(export, config, folder / "b.log", env=env) as second:
        yield [server.url.removeprefix("http://") for server in (first, second)]
