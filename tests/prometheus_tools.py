"""Debian's Prometheus for the tests: ``promtool`` on rule files and unit tests of rules, and a
real ``prometheus`` on loopback scraping replicas."""

from __future__ import annotations

import shutil
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx
import pytest
import yaml

PROMETHEUS_MISSING = ("Debian's prometheus (with promtool) is not installed: run `make test` as "
                      "root, or apt-get install prometheus")
needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None, reason=PROMETHEUS_MISSING)
needs_prometheus = pytest.mark.skipif(shutil.which("prometheus") is None,
                                      reason=PROMETHEUS_MISSING)


def promtool(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(["promtool", *arguments], capture_output=True, text=True, timeout=120)


def rule_tests(folder: Path, rules: str, tests: list[dict]) -> subprocess.CompletedProcess:
    """``promtool test rules`` on ``rules`` (a rule file's text) with ``tests`` (promtool's
    ``tests:`` items), evaluated every minute, the groups in the file's order: without
    ``group_eval_order`` promtool evaluates them in a random order, and an alert on a recording
    rule then read the value of a minute before in about one run of six (firing a minute late)."""
    (folder / "rules.yml").write_text(rules)
    groups = [group["name"] for group in yaml.safe_load(rules)["groups"]]
    (folder / "tests.yml").write_text(yaml.safe_dump(
        {"rule_files": ["rules.yml"], "evaluation_interval": "1m", "group_eval_order": groups,
         "tests": tests}, sort_keys=False))
    return promtool("test", "rules", str(folder / "tests.yml"))


def series_values(values: list[float | None]) -> str:
    """A promtool series of one value a minute; None (no value yet) is ``_``."""
    return " ".join("_" if value is None else repr(float(value)) for value in values)


@contextmanager
def local_prometheus(folder: Path, port: int) -> Iterator[str]:
    """``prometheus`` with ``folder/prometheus.yml`` on 127.0.0.1:``port``, its data in
    ``folder/data``, until the block ends, once it is ready: its base URL."""
    url = f"http://127.0.0.1:{port}"
    with open(folder / "prometheus.log", "w") as log:
        process = subprocess.Popen(
            ["prometheus", f"--config.file={folder / 'prometheus.yml'}",
             f"--storage.tsdb.path={folder / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not _ready(url):
            assert process.poll() is None and time.monotonic() < deadline, \
                (folder / "prometheus.log").read_text()[-3000:]
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/-/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def query(url: str, expression: str) -> list[dict]:
    """An instant query through Prometheus' HTTP API: its result vector."""
    answer = httpx.get(f"{url}/api/v1/query", params={"query": expression}, timeout=10).json()
    assert answer["status"] == "success", answer
    return answer["data"]["result"]
