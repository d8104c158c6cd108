"""TLS at the front door: nginx, rendered from deployment.yaml with a self-signed certificate
made by openssl, in front of two ``imgcls serve`` replicas on loopback: curl trusts it with the
CA and not without, TLS 1.1 is refused, plain HTTP is redirected or refused as configured, and
the API key still applies behind TLS."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import yaml

from imgcls_utils.config import ConfigError
from imgcls_utils.serving.deployment import (DEPLOYMENT_RELATIVE_PATH, compose_file,
                                             free_loopback_port, load_deployment, local_nginx,
                                             nginx_conf, nginx_executable, write_deployment)
from imgcls_utils.serving.tls import TlsFront
from tests.conftest import REPO_ROOT
from tests.live_server import two_replicas

SETTINGS_PATH = REPO_ROOT / DEPLOYMENT_RELATIVE_PATH
KEY = "tls-test-key"
needs_tools = pytest.mark.skipif(
    not (nginx_executable() and shutil.which("openssl") and shutil.which("curl")),
    reason="nginx, openssl or curl not installed: run `make test` as root, or apt-get install "
           "nginx openssl curl")


def make_certificate(folder) -> tuple:
    """A self-signed certificate for 127.0.0.1 and localhost, and its key."""
    certificate, key = folder / "certificate.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(key), "-out",
                    str(certificate), "-days", "2", "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True)
    return certificate, key


def with_tls(folder, certificate="certificate.pem", key="key.pem", plain_http="redirect"):
    """The committed deployment.yaml with HTTPS on, in ``folder``: its loaded settings."""
    text = (SETTINGS_PATH.read_text().replace("tls_certificate: none ",
                                              f"tls_certificate: {certificate} ")
            .replace("tls_key: none ", f"tls_key: {key} ")
            .replace("plain_http: redirect ", f"plain_http: {plain_http} "))
    (folder / "deployment.yaml").write_text(text)
    return load_deployment(folder / "deployment.yaml")


# ----------------------------------------------------------------------------- rendering

def test_compose_publishes_https_and_mounts_the_certificate(tmp_path):
    (tmp_path / "certificate.pem").write_text("x")
    (tmp_path / "key.pem").write_text("x")
    settings = with_tls(tmp_path)
    compose = compose_file(settings)
    assert "# POST https://localhost:8080/v1/models/digits_cnn:predict" in compose
    nginx = yaml.safe_load(compose)["services"]["nginx"]
    assert nginx["ports"] == ["0.0.0.0:8080:443", "0.0.0.0:8079:80"]
    assert nginx["volumes"][1:] == ["certificate.pem:/etc/nginx/tls/certificate.pem:ro",
                                    "key.pem:/etc/nginx/tls/key.pem:ro"]
    write_deployment(settings)
    conf = (tmp_path / "nginx.conf").read_text()
    assert "listen 443 ssl;" in conf and "ssl_protocols TLSv1.2 TLSv1.3;" in conf
    assert "listen 80;" in conf and "return 308 https://$host:8080$request_uri;" in conf


def test_a_missing_certificate_or_key_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="nginx.tls_certificate = 'nowhere.pem': no such file"):
        with_tls(tmp_path, certificate="nowhere.pem")
    (tmp_path / "certificate.pem").write_text("x")
    with pytest.raises(ConfigError, match="nginx.tls_certificate is set but nginx.tls_key is "
                                          "none"):
        with_tls(tmp_path, key="none")
    with pytest.raises(ConfigError, match="nginx.plain_http = 'ignore': allowed is redirect | "
                                          "refuse"):
        with_tls(tmp_path, plain_http="ignore")


# ----------------------------------------------------------------------------- a real nginx

@pytest.fixture(scope="module")
def keyed_replicas(served_model, tmp_path_factory):
    """Two replicas on loopback that need the API key: their ``host:port``."""
    with two_replicas(served_model, tmp_path_factory.mktemp("tls_replicas"),
                      env={**os.environ, "IMGCLS_API_KEY": KEY}) as replicas:
        yield replicas


def curl(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "--silent", "--show-error", "--max-time", "20", *arguments],
                          capture_output=True, text=True)


@needs_tools
@pytest.mark.parametrize("plain_http", ["redirect", "refuse"])
def test_nginx_terminates_tls_in_front_of_the_replicas(keyed_replicas, served_model, tmp_path,
                                                        plain_http):
    certificate, key = make_certificate(tmp_path)
    settings = with_tls(tmp_path, plain_http=plain_http)
    port, plain_port = free_loopback_port(), free_loopback_port()
    front = TlsFront(str(certificate), str(key), f"127.0.0.1:{plain_port}", plain_http, port)
    conf = nginx_conf(settings, keyed_replicas, f"127.0.0.1:{port}", front)
    (tmp_path / "nginx").mkdir()
    https = f"https://127.0.0.1:{port}"
    digit = sorted((served_model[0].path("raw_dir") / "digits").glob("*/*.png"))[0]
    with local_nginx(conf, tmp_path / "nginx", port):
        trusted = curl("--cacert", str(certificate), "--include", f"{https}/healthz")
        untrusted = curl(f"{https}/healthz")
        old_protocol = subprocess.run(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_1", "-cipher",
             "DEFAULT:@SECLEVEL=0"], input="", capture_output=True, text=True, timeout=30)
        new_protocol = subprocess.run(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_3"], input="",
            capture_output=True, text=True, timeout=30)
        plain = curl("--include", f"http://127.0.0.1:{plain_port}/v1/models/digits_cnn?x=1")
        without_key = curl("--cacert", str(certificate), "--write-out", "%{http_code}",
                           "--output", "/dev/null", "-F", f"file=@{digit}", f"{https}/predict")
        with_key = curl("--cacert", str(certificate), "-H", f"X-API-Key: {KEY}", "-F",
                        f"file=@{digit}", f"{https}/predict")
    assert trusted.returncode == 0 and trusted.stdout.startswith("HTTP/1.1 200"), trusted
    assert "strict-transport-security: max-age=63072000" in trusted.stdout.lower()
    assert untrusted.returncode == 60, untrusted  # curl: the peer's certificate is not trusted
    # nginx itself refuses TLS 1.1 (its alert), not the client's own defaults
    assert old_protocol.returncode != 0 and "alert protocol version" in old_protocol.stderr, \
        old_protocol.stderr
    assert new_protocol.returncode == 0 and "TLSv1.3" in new_protocol.stdout
    status_line = plain.stdout.splitlines()[0]
    if plain_http == "redirect":
        assert status_line.startswith("HTTP/1.1 308")
        assert f"Location: {https}/v1/models/digits_cnn?x=1" in plain.stdout
    else:
        assert status_line.startswith("HTTP/1.1 403")
        assert f"plain HTTP is refused: use {https}/v1/models/digits_cnn?x=1" in plain.stdout
    assert without_key.stdout == "401"
    assert with_key.returncode == 0 and '"predictions"' in with_key.stdout, with_key
