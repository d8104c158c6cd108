"""A replica killed mid-response sends all of a response or none of it (``WholeResponses``),
so nginx can still retry the request on another replica. The replicas here are real uvicorn
servers that SIGKILL themselves between a response's headers and its body."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from contextlib import contextmanager
from typing import Iterator

import httpx
import pytest

from imgcls_utils.serving.deployment import (free_loopback_port, load_deployment, local_nginx,
                                             nginx_conf)
from tests.conftest import REPO_ROOT
from tests.dies_mid_response import BODY
from tests.test_deployment import SETTINGS_PATH, needs_nginx


@contextmanager
def replica(protocol: str, fate: str) -> Iterator[tuple[subprocess.Popen, int]]:
    """tests/dies_mid_response.py running, with its port."""
    process = subprocess.Popen([sys.executable, "-m", "tests.dies_mid_response", protocol, fate],
                               cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        yield process, int(process.stdout.readline())
    finally:
        process.kill()
        process.wait(timeout=10)
        process.stdout.close()


def raw_answer(port: int) -> bytes:
    """Every byte the server sends for one GET before its connection closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        connection.sendall(b"GET / HTTP/1.1\r\nHost: replica\r\n\r\n")
        received = b""
        while chunk := connection.recv(65536):
            received += chunk
    return received


def test_a_replica_killed_mid_response_has_sent_none_of_it():
    with replica("whole", "dies") as (process, port):
        assert raw_answer(port) == b""
        assert process.wait(timeout=10) == -signal.SIGKILL


def test_uvicorn_alone_sends_the_headers_of_a_response_it_never_finishes():
    """Why ``WholeResponses`` exists: should uvicorn ever write a response at once, this fails
    and the wrapper can go."""
    with replica("uvicorn", "dies") as (process, port):
        answer = raw_answer(port)
        assert answer.startswith(b"HTTP/1.1 200 OK") and answer.endswith(b"\r\n\r\n")
        assert process.wait(timeout=10) == -signal.SIGKILL


def answers_through_nginx(protocol: str, tmp_path) -> tuple[list, int]:
    """Uploads through the committed nginx config, one by one, until the replica that dies has
    received one (at most 4): their (status, body) or error, and how the dying replica ended."""
    settings, port = load_deployment(SETTINGS_PATH), free_loopback_port()
    (tmp_path / "nginx").mkdir()
    with replica(protocol, "dies") as (dying, dying_port), \
            replica(protocol, "lives") as (_, living_port):
        upstreams = [f"127.0.0.1:{dying_port}", f"127.0.0.1:{living_port}"]
        with local_nginx(nginx_conf(settings, upstreams, f"127.0.0.1:{port}"),
                         tmp_path / "nginx", port):
            answers = []
            while dying.poll() is None and len(answers) < 4:
                try:
                    response = httpx.post(f"http://127.0.0.1:{port}/predict", content=b"image")
                    answers.append((response.status_code, response.content))
                except httpx.HTTPError as error:
                    answers.append(repr(error))
            return answers, dying.wait(timeout=10)


@needs_nginx
def test_nginx_retries_a_request_whose_replica_died_mid_response(tmp_path):
    answers, dying_replica_ended = answers_through_nginx("whole", tmp_path)
    assert dying_replica_ended == -signal.SIGKILL and answers and set(answers) == {(200, BODY)}


@needs_nginx
def test_nginx_cannot_retry_once_it_has_passed_on_the_headers(tmp_path):
    answers, dying_replica_ended = answers_through_nginx("uvicorn", tmp_path)
    assert dying_replica_ended == -signal.SIGKILL
    assert [answer for answer in answers if answer != (200, BODY)] == [
        "RemoteProtocolError('peer closed connection without sending complete message body "
        f"(received 0 bytes, expected {len(BODY)})')"]
