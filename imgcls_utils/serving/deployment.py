"""``imgcls deploy``: N ``imgcls serve`` replicas behind nginx, from one settings file.

``Deployment/deployment.yaml`` holds the operator's choices (which export, how many replicas,
their batching and limits, nginx's retries and timeouts). It is validated like the main config
(the same rules for the ``serve:`` keys, every problem in one pass) and rendered into
``compose.yaml`` (the replicas' containers and nginx's), ``nginx.conf`` and the gRPC clients'
retry policy (``grpc_service_config.json``) next to it. The renderers are pure: the failover
test and ``bench/deployment.py`` run the same ``nginx.conf`` on this host, with the replicas on
loopback instead of in containers.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import yaml

from ..config import ConfigError, read_flat, request_bytes, validate
from ..config_rules import RULES, Rule, either, identifier, integer, positive_number, text
from .dashboard import dashboard_json
from .grpc_front import GRPC_SERVICE_CONFIG, NGINX_GRPC_TEMPLATE, grpc_service_config
from .prometheus_config import (MONITORING_DIR, MONITORING_RULES, PROMETHEUS_FILE, RULES_FILE,
                                prometheus_service, prometheus_yml, rules_yml)
from .tls import (CONTAINER_HTTPS_PORT, TLS_RULES, TlsFront, container_front, container_mounts,
                  hsts_line, plain_http_server, server_tls_lines, tls_problems)

DEPLOYMENT_RELATIVE_PATH = Path("Deployment") / "deployment.yaml"
DOCKERFILE = "Model_Serving/Dockerfile"  # relative to the repository root, the build context
CONTAINER_NGINX_PORT = 80
CONTAINER_NGINX_GRPC_PORT = 8500
MODELS_MOUNT = "/models"
# The replicas' batching and limits: the main config's keys, with the main config's rules.
SERVE_KEYS = ("max_batch_size", "batch_timeout_ms", "max_queued_images", "max_request_mb",
              "poll_seconds", "top_k", "api_key_variable", "drift_window")

DEPLOYMENT_RULES: dict[str, Rule] = {
    "model.name": identifier(),
    "model.exports_dir": text(),
    "replicas.count": integer(1, maximum=64),
    "replicas.port": integer(1, maximum=65535),
    "replicas.grpc_port": integer(1, maximum=65535),
    "replicas.image": text(),
    **{f"serve.{key}": RULES[f"serve.{key}"] for key in SERVE_KEYS},
    "nginx.image": text(),
    "nginx.host": text(),
    "nginx.port": integer(1, maximum=65535),
    "nginx.grpc_port": integer(1, maximum=65535),
    "nginx.max_fails": integer(0),
    "nginx.fail_timeout_s": integer(1),
    "nginx.connect_timeout_s": integer(1),
    "nginx.read_timeout_s": integer(1),
    "nginx.retry_tries": integer(0),
    "nginx.keepalive": integer(1),
    **TLS_RULES,
    "kubernetes.namespace": identifier(),
    "kubernetes.exports_claim": identifier(),
    "kubernetes.cpu_request": positive_number(),
    "kubernetes.memory_request_mb": integer(64),
    "kubernetes.memory_limit_mb": integer(64),
    "kubernetes.startup_seconds": integer(5),
    "kubernetes.min_replicas": integer(1),
    "kubernetes.max_replicas": integer(1),
    "kubernetes.target_cpu_percent": integer(1),
    "kubernetes.target_in_flight": either("none", integer(1), "an integer >= 1"),
    **MONITORING_RULES,
}

# Each replica's health as Docker checks it: the image has python, not curl. urlopen raises on
# 503 (no version loaded yet) as on a refused connection, so either is "unhealthy".
HEALTHCHECK_SCRIPT = ("import urllib.request; "
                      "urllib.request.urlopen('http://127.0.0.1:{port}/healthz', timeout=2)")
HEALTHCHECK_TIMING = {"interval": "10s", "timeout": "3s", "retries": 3, "start_period": "60s"}
GENERATED_HEADER = ("# Written by `imgcls deploy` from deployment.yaml: edit that file and run "
                    "it again.\n")


@dataclass(frozen=True)
class DeploymentSettings:
    """``deployment.yaml``, validated. ``folder`` is the file's own folder: ``exports_dir`` is
    relative to it, and ``compose.yaml`` and ``nginx.conf`` are written into it."""

    folder: Path
    model: str
    exports_dir: str
    replicas: int
    replica_port: int
    replica_grpc_port: int
    image: str
    serve: tuple[tuple[str, Any], ...]
    nginx_image: str
    nginx_host: str
    nginx_port: int
    nginx_grpc_port: int
    max_fails: int
    fail_timeout_s: int
    connect_timeout_s: int
    read_timeout_s: int
    retry_tries: int
    keepalive: int
    tls: dict  # nginx's tls_certificate, tls_key, plain_http and plain_http_port
    k8s: dict  # the kubernetes: section, by key
    monitoring: dict  # the monitoring: section, by key

    @property
    def api_key_variable(self) -> str:
        return dict(self.serve)["api_key_variable"]

    def serve_options(self) -> list[str]:
        """The ``serve:`` settings as ``--set`` values (``serve.top_k=3``), read back as YAML."""
        return [f"serve.{key}={yaml.safe_dump(value).splitlines()[0]}"
                for key, value in self.serve]

    @property
    def max_queued_images(self) -> int:
        return dict(self.serve)["max_queued_images"]

    @property
    def max_request_bytes(self) -> int:
        """``serve.max_request_mb`` in bytes, as the replicas count it."""
        return request_bytes(dict(self.serve)["max_request_mb"])


def load_deployment(path: str | Path) -> DeploymentSettings:
    """The settings of a ``deployment.yaml``; every problem in it in one ``ConfigError``."""
    path = Path(path)
    values = read_flat(path)
    problems = validate(values, str(path), DEPLOYMENT_RULES)
    tls = {key: values.get(f"nginx.{key}") for key in ("tls_certificate", "tls_key",
                                                       "plain_http", "plain_http_port")}
    problems = problems or tls_problems(tls, path.resolve().parent, str(path))
    if problems:
        raise ConfigError(problems)
    return DeploymentSettings(
        folder=path.resolve().parent, model=values["model.name"],
        exports_dir=values["model.exports_dir"], replicas=values["replicas.count"],
        replica_port=values["replicas.port"], replica_grpc_port=values["replicas.grpc_port"],
        image=values["replicas.image"], nginx_grpc_port=values["nginx.grpc_port"],
        serve=tuple((key, values[f"serve.{key}"]) for key in SERVE_KEYS),
        nginx_image=values["nginx.image"], nginx_host=values["nginx.host"],
        nginx_port=values["nginx.port"], max_fails=values["nginx.max_fails"],
        fail_timeout_s=values["nginx.fail_timeout_s"],
        connect_timeout_s=values["nginx.connect_timeout_s"],
        read_timeout_s=values["nginx.read_timeout_s"], retry_tries=values["nginx.retry_tries"],
        keepalive=values["nginx.keepalive"], tls=tls,
        k8s=_section(values, "kubernetes"), monitoring=_section(values, "monitoring"))


def _section(values: dict, section: str) -> dict:
    return {key.split(".", 1)[1]: value for key, value in values.items()
            if key.startswith(f"{section}.")}


# ----------------------------------------------------------------------------- nginx

NGINX_TEMPLATE = """\
{header}# nginx in front of the imgcls serve replicas: round robin, a failed replica's requests
# retried on another (POST inference is safe to repeat), one JSON access line per request.
worker_processes auto;

events {{
    worker_connections 1024;
}}

http {{
    log_format imgcls_json escape=json '{{"time":"$time_iso8601","method":"$request_method",'
        '"uri":"$request_uri","status":$status,"request_time":$request_time,'
        '"upstream_addr":"$upstream_addr","upstream_status":"$upstream_status",'
        '"upstream_response_time":"$upstream_response_time","bytes_sent":$body_bytes_sent}}';
    access_log /dev/stdout imgcls_json;

    upstream imgcls_replicas {{
        zone imgcls_replicas 64k;  # failure counts shared by all workers
{servers}
        keepalive {keepalive};
        keepalive_timeout 4s;  # below uvicorn's 5 s: nginx never reuses a connection it closed
    }}

    server {{
        listen {listen};
{tls}        # serve.max_request_mb = {max_request_mb:g}: what the replicas accept, nginx accepts
        client_max_body_size {max_request_bytes};

        location / {{
            proxy_pass http://imgcls_replicas;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_next_upstream error timeout http_502 http_503 http_504 non_idempotent;
            proxy_next_upstream_tries {retry_tries};
            proxy_connect_timeout {connect_timeout_s}s;
            proxy_send_timeout {read_timeout_s}s;
            proxy_read_timeout {read_timeout_s}s;
            add_header X-Upstream $upstream_addr always;  # the replica(s) tried, in order
{hsts}        }}
    }}
{plain_http_server}{grpc}}}
"""


def nginx_conf(settings: DeploymentSettings, upstreams: list[str], listen: str,
               tls: TlsFront | None = None, grpc_upstreams: list[str] = (),
               grpc_listen: str = "") -> str:
    """A complete nginx.conf balancing ``upstreams`` (``host:port``) and listening on
    ``listen`` (``80``, ``127.0.0.1:8080``), with HTTPS there when given a ``tls`` front, and
    with ``grpc_upstreams`` the replicas' gRPC ports on ``grpc_listen``. No daemon, pid or user
    directives: the official image's entrypoint and a test's ``-g`` options set those."""
    common = dict(keepalive=settings.keepalive, max_request_bytes=settings.max_request_bytes,
                  retry_tries=settings.retry_tries, connect_timeout_s=settings.connect_timeout_s,
                  read_timeout_s=settings.read_timeout_s)
    grpc = NGINX_GRPC_TEMPLATE.format(servers=_servers(settings, grpc_upstreams),
                                      listen=grpc_listen, **common) if grpc_upstreams else ""
    return NGINX_TEMPLATE.format(
        header=GENERATED_HEADER, servers=_servers(settings, upstreams),
        listen=f"{listen} ssl" if tls else listen, tls=server_tls_lines(tls) if tls else "",
        hsts=hsts_line(tls), plain_http_server=plain_http_server(tls), grpc=grpc,
        max_request_mb=dict(settings.serve)["max_request_mb"], **common)


def _servers(settings: DeploymentSettings, upstreams: list[str]) -> str:
    return "\n".join(f"        server {address} max_fails={settings.max_fails} "
                     f"fail_timeout={settings.fail_timeout_s}s;" for address in upstreams)


# ----------------------------------------------------------------------------- compose

def replica_names(settings: DeploymentSettings) -> list[str]:
    return [f"replica-{number}" for number in range(1, settings.replicas + 1)]


def replica_arguments(settings: DeploymentSettings) -> list[str]:
    """What each replica container passes to its image's ``imgcls serve`` entrypoint."""
    arguments = [f"{MODELS_MOUNT}/{settings.model}", "--host", "0.0.0.0", "--port",
                 str(settings.replica_port), "--grpc-port", str(settings.replica_grpc_port)]
    for option in settings.serve_options():
        arguments += ["--set", option]
    return arguments


def _replica_service(settings: DeploymentSettings) -> dict:
    return {
        "image": settings.image,  # built from the Dockerfile when missing (or with --build)
        "build": {"context": "..", "dockerfile": DOCKERFILE},
        "command": replica_arguments(settings),
        "volumes": [f"{settings.exports_dir}/{settings.model}:{MODELS_MOUNT}/{settings.model}:ro"],
        # No value: the key is passed through from compose's environment when set there, and
        # the replicas serve without one when it is not.
        "environment": [settings.api_key_variable],
        "healthcheck": {"test": ["CMD", "python", "-c",
                                 HEALTHCHECK_SCRIPT.format(port=settings.replica_port)],
                        **HEALTHCHECK_TIMING},
        "restart": "unless-stopped",
    }


def compose_file(settings: DeploymentSettings) -> str:
    """compose.yaml: one service per replica, built from the repository's Dockerfile, and
    nginx in front of them once they are all healthy."""
    names = replica_names(settings)
    services = {name: _replica_service(settings) for name in names}
    services["nginx"] = {
        "image": settings.nginx_image,
        "ports": _nginx_ports(settings),
        "volumes": ["./nginx.conf:/etc/nginx/nginx.conf:ro", *container_mounts(settings.tls)],
        "depends_on": {name: {"condition": "service_healthy"} for name in names},
        "restart": "unless-stopped",
    }
    services["prometheus"] = prometheus_service(settings.monitoring, names)
    usage = (f"# docker compose -f Deployment/compose.yaml up --build -d (with Prometheus: "
             f"--profile monitoring); then\n"
             f"# POST {'http' if settings.tls['tls_certificate'] == 'none' else 'https'}://"
             f"localhost:{settings.nginx_port}/v1/models/{settings.model}:predict\n")
    return GENERATED_HEADER + usage + yaml.safe_dump({"services": services}, sort_keys=False,
                                                     width=100)


def _nginx_ports(settings: DeploymentSettings) -> list[str]:
    """nginx's published ports: nginx.port (HTTPS on 443 with TLS), plain HTTP's, gRPC's."""
    host = settings.nginx_host
    grpc = f"{host}:{settings.nginx_grpc_port}:{CONTAINER_NGINX_GRPC_PORT}"
    if settings.tls["tls_certificate"] == "none":
        return [f"{host}:{settings.nginx_port}:{CONTAINER_NGINX_PORT}", grpc]
    return [f"{host}:{settings.nginx_port}:{CONTAINER_HTTPS_PORT}",
            f"{host}:{settings.tls['plain_http_port']}:{CONTAINER_NGINX_PORT}", grpc]


def write_deployment(settings: DeploymentSettings) -> list[Path]:
    """compose.yaml, nginx.conf, the gRPC clients' retry policy and monitoring/ (Prometheus'
    configuration and rules, the Grafana dashboard), rendered into the settings file's folder:
    their paths."""
    names = replica_names(settings)
    upstreams = [f"{name}:{settings.replica_port}" for name in names]
    monitoring = settings.monitoring
    return write_files(settings, {
        "compose.yaml": compose_file(settings),
        "nginx.conf": _container_nginx_conf(settings, upstreams, [
            f"{name}:{settings.replica_grpc_port}" for name in names]),
        GRPC_SERVICE_CONFIG: grpc_service_config(),
        f"{MONITORING_DIR}/{PROMETHEUS_FILE}": prometheus_yml(upstreams,
                                                             monitoring["scrape_interval_s"]),
        f"{MONITORING_DIR}/{RULES_FILE}": rules_yml(monitoring, settings.max_queued_images),
        f"{MONITORING_DIR}/dashboard.json": dashboard_json(monitoring["drift_psi"])})


def _container_nginx_conf(settings: DeploymentSettings, upstreams: list[str],
                          grpc_upstreams: list[str]) -> str:
    tls = container_front(settings.tls, settings.nginx_port)
    return nginx_conf(settings, upstreams, str(CONTAINER_HTTPS_PORT if tls else
                                               CONTAINER_NGINX_PORT), tls, grpc_upstreams,
                      str(CONTAINER_NGINX_GRPC_PORT))


def write_files(settings: DeploymentSettings, files: dict[str, str]) -> list[Path]:
    """``{name: content}`` written into the settings file's folder: their paths."""
    for name, content in files.items():
        (settings.folder / name).parent.mkdir(exist_ok=True)
        (settings.folder / name).write_text(content)
    return [settings.folder / name for name in files]


# ----------------------------------------------------------------------------- on this host

def nginx_executable() -> str | None:
    """Debian's nginx, also where /usr/sbin is not on the PATH (a non-root shell)."""
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")


def free_loopback_port() -> int:
    """A port nothing listens on at 127.0.0.1 now, for a local nginx's ``listen``."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def local_nginx(conf: str, folder: Path, port: int) -> Iterator[subprocess.Popen]:
    """nginx on this host with ``conf`` (listening on 127.0.0.1:``port``) until the block ends,
    once it accepts connections: its pid file and error log in ``folder``, its JSON access
    lines in ``folder/access.log``. How the failover test and bench/deployment.py run the
    rendered config without containers."""
    (folder / "nginx.conf").write_text(conf)
    command = [nginx_executable(), "-p", str(folder), "-c", str(folder / "nginx.conf"),
               "-e", str(folder / "error.log"), "-g", f"daemon off; pid {folder / 'nginx.pid'};"]
    with open(folder / "access.log", "w") as access_log:
        process = subprocess.Popen(command, stdout=access_log, stderr=subprocess.STDOUT)
    try:
        _wait_until_listening(process, port, folder / "error.log")
        yield process
    finally:
        process.terminate()
        process.wait(timeout=30)


def _wait_until_listening(process: subprocess.Popen, port: int, error_log: Path) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                problems = error_log.read_text() if error_log.exists() else ""
                raise RuntimeError(f"nginx did not start on 127.0.0.1:{port}: {problems}")
            time.sleep(0.05)
