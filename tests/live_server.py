"""A real ``imgcls serve`` in a subprocess on a free loopback port, for the tests that need a
server over HTTP (the server's own tests, the web page in a browser, replicas behind nginx)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import threading
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
    grpc: str  # host:port of its gRPC API


def run_threads(target, count: int) -> None:
    """``target`` run by ``count`` threads at once, until every one has ended."""
    threads = [threading.Thread(target=target) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


@contextmanager
def live_server(export: Path, config: Path, log: Path, *set_options: str,
                imgcls: tuple[str, ...] = (sys.executable, "-m", "imgcls_utils.cli"),
                cwd: Path = REPO_ROOT, env: dict | None = None) -> Iterator[LiveServer]:
    """``imgcls serve export --config config --set ...`` until the block ends, once /healthz
    answers 200; its stderr (one JSON line per request) goes to ``log``. ``imgcls``: the
    command that runs imgcls (default: this project's, in this Python)."""
    with live_servers(export, config, [log], *set_options, imgcls=imgcls, cwd=cwd,
                      env=env) as [server]:
        yield server


@contextmanager
def live_servers(export: Path, config: Path, logs: list[Path], *set_options: str,
                 imgcls: tuple[str, ...] = (sys.executable, "-m", "imgcls_utils.cli"),
                 cwd: Path = REPO_ROOT, env: dict | None = None) -> Iterator[list[LiveServer]]:
    """``live_server``'s replicas of one export, a log each, all started before the first is
    waited for: their start-ups (importing TensorFlow, loading the model) overlap."""
    command = [*imgcls, "serve", str(export), "--port", "0", "--grpc-port", "0", "--config",
               str(config)]
    for option in set_options:
        command += ["--set", option]
    processes = []
    try:
        for log in logs:
            with open(log, "w") as stderr:
                processes.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr,
                                                  text=True, cwd=cwd, env=env))
        yield [answering(process, log) for process, log in zip(processes, logs)]
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


def answering(process: subprocess.Popen, log: Path) -> LiveServer:
    """The server ``process`` once it has printed its addresses and /healthz answers 200."""
    line = process.stdout.readline()
    url = re.search(r"http://127\.0\.0\.1:\d+", line)
    grpc = re.search(r"gRPC at (\S+)", line)
    assert url and grpc, line + log.read_text()[-2000:]
    deadline = time.monotonic() + 60
    while healthz_status(url[0]) != 200:
        assert time.monotonic() < deadline and process.poll() is None, log.read_text()[-2000:]
        time.sleep(0.1)
    return LiveServer(url[0], process, log, grpc[1])


def healthz_status(url: str) -> int | str:
    """/healthz's status code, or the error of a server not answering (one that died: its log
    then says why)."""
    try:
        return httpx.get(f"{url}/healthz").status_code
    except httpx.TransportError as error:
        return repr(error)


@contextmanager
def two_replicas(served_model, folder: Path, env: dict | None = None) -> Iterator[list[str]]:
    """Two ``imgcls serve`` replicas of the shared export (copied into ``folder``) on loopback,
    as nginx or Prometheus reach them: ``["127.0.0.1:port", ...]``."""
    cfg, _, version = served_model
    export = folder / "exports" / version.parent.name
    shutil.copytree(version, export / "1")
    config = cfg.root / CONFIG_RELATIVE_PATH
    with live_servers(export, config, [folder / "a.log", folder / "b.log"], env=env) as servers:
        yield [server.url.removeprefix("http://") for server in servers]


def swap_under_load(url: str, folder: Path, name: str, ask, clients: int = 4) -> list[tuple]:
    """Version 2 (a copy of version 1) written into the served ``folder`` while ``clients``
    threads run ``ask(stop, offset)`` (asking until the ``stop`` event is set), until the
    server reports it AVAILABLE and version 1 END: the ``(version, state)`` pairs seen last."""
    stop = threading.Event()
    threads = [threading.Thread(target=ask, args=(stop, offset)) for offset in range(clients)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.3)
        staging = folder / ".2.staging"
        shutil.copytree(folder / "1", staging)
        staging.rename(folder / "2")
        deadline, states = time.monotonic() + 60, []
        while time.monotonic() < deadline and states != [("2", "AVAILABLE"), ("1", "END")]:
            time.sleep(0.05)
            states = [(s["version"], s["state"]) for s in httpx.get(
                f"{url}/v1/models/{name}").json()["model_version_status"]]
        time.sleep(0.3)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    return states
