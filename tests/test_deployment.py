"""Deployment/: the settings are validated like the main config, the committed compose.yaml and
nginx.conf are what `imgcls deploy` renders, the Dockerfile installs as the Makefile does and runs
arguments the CLI accepts, and the rendered nginx keeps every request answered while a replica
is killed under load (real nginx, real `imgcls serve` replicas on loopback)."""

import json
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace

import httpx
import pytest
import yaml

from imgcls_utils.cli import _parser, main
from imgcls_utils.config import CONFIG_RELATIVE_PATH, ConfigError, load_config
from imgcls_utils.config_rules import RULES
from imgcls_utils.serving.deployment import (DEPLOYMENT_RELATIVE_PATH, DEPLOYMENT_RULES,
                                             HEALTHCHECK_SCRIPT, compose_file, free_loopback_port,
                                             load_deployment, local_nginx, nginx_conf,
                                             nginx_executable, write_deployment)
from tests.conftest import REPO_ROOT
from tests.live_server import live_servers, run_threads

SETTINGS_PATH = REPO_ROOT / DEPLOYMENT_RELATIVE_PATH
DOCKERFILE = REPO_ROOT / "Model_Serving" / "Dockerfile"
NGINX_MISSING = ("nginx not installed: run `make test` as root (it apt-get installs chromium "
                 "chromium-driver nginx) or apt-get install nginx")
needs_nginx = pytest.mark.skipif(nginx_executable() is None, reason=NGINX_MISSING)


def nginx_access_log(folder) -> list[dict]:
    """The JSON access lines of the nginx ``local_nginx`` ran in ``folder``."""
    return [json.loads(line) for line in (folder / "access.log").read_text().splitlines()]


def settings_problems(tmp_path, edit) -> str:
    """The ConfigError of the committed settings file after ``edit`` (text -> text)."""
    path = tmp_path / "deployment.yaml"
    path.write_text(edit(SETTINGS_PATH.read_text()))
    with pytest.raises(ConfigError) as caught:
        load_deployment(path)
    return str(caught.value)


# ----------------------------------------------------------------------------- settings

def test_every_setting_has_a_rule_and_a_one_line_comment():
    text = SETTINGS_PATH.read_text()
    values = yaml.safe_load(text)
    assert {f"{s}.{k}" for s, section in values.items() for k in section} == set(DEPLOYMENT_RULES)
    commented = re.findall(r"^ +(\w+):[^#\n]*# *\S", text, re.MULTILINE)
    assert len(commented) == len(DEPLOYMENT_RULES)
    assert max(map(len, text.splitlines())) <= 100
    for key in values["serve"]:  # the replicas accept exactly what `imgcls serve` accepts
        assert DEPLOYMENT_RULES[f"serve.{key}"] is RULES[f"serve.{key}"]


def test_a_misspelled_key_gets_a_suggestion_naming_the_file(tmp_path):
    message = settings_problems(tmp_path, lambda text: text.replace("max_fails:", "max_fail:"))
    assert (f"unknown key 'nginx.max_fail' (from {tmp_path / 'deployment.yaml'}); did you mean "
            "'nginx.max_fails'?") in message


@pytest.mark.parametrize("before, after, expected", [
    ("count: 2 ", "count: 0 ", "replicas.count = 0: allowed is an integer from 1 to 64"),
    ("batch_timeout_ms: 2 ", "batch_timeout_ms: 5000 ",
     "serve.batch_timeout_ms = 5000: allowed is an integer from 0 to 1000"),
    ("name: digits_cnn ", "name: digits/cnn ",
     "model.name = 'digits/cnn': allowed is letters, digits, '-' and '_' only"),
    ("port: 8080 ", "port: off ", "nginx.port = False (bool): expected an integer from 1 to 65535"),
])
def test_a_bad_value_names_the_key_and_what_is_allowed(tmp_path, before, after, expected):
    assert expected in settings_problems(tmp_path, lambda text: text.replace(before, after))


def test_every_problem_is_reported_in_one_pass(tmp_path):
    message = settings_problems(tmp_path, lambda text: text.replace("top_k: 3", "top_k: 0")
                                .replace("keepalive:", "keep_alive:"))
    assert message.count("\n  - ") == 3, message
    assert "serve.top_k = 0" in message and "'nginx.keep_alive'" in message
    assert "missing key 'nginx.keepalive'" in message


# ----------------------------------------------------------------------------- rendered files

def test_committed_compose_nginx_and_monitoring_files_are_what_imgcls_deploy_renders(tmp_path):
    committed = load_deployment(SETTINGS_PATH)
    for path in write_deployment(replace(committed, folder=tmp_path)):
        name = path.relative_to(tmp_path)
        assert (SETTINGS_PATH.parent / name).read_text() == path.read_text(), \
            f"Deployment/{name} is stale: run imgcls deploy"


def test_imgcls_deploy_writes_both_files_and_a_bad_file_is_a_user_error(tmp_path, capsys):
    settings = tmp_path / "deployment.yaml"
    settings.write_text(SETTINGS_PATH.read_text().replace("count: 2 ", "count: 3 "))
    assert main(["deploy", "--settings", str(settings)]) == 0
    printed = capsys.readouterr()
    assert printed.out.split() == ["wrote", str(tmp_path / "compose.yaml"),
                                   "wrote", str(tmp_path / "nginx.conf"),
                                   "wrote", str(tmp_path / "grpc_service_config.json"),
                                   "wrote", str(tmp_path / "monitoring" / "prometheus.yml"),
                                   "wrote", str(tmp_path / "monitoring" / "rules.yml"),
                                   "wrote", str(tmp_path / "monitoring" / "dashboard.json")]
    assert "does not exist yet" in printed.err  # no exports folder next to the tmp copy
    services = yaml.safe_load((tmp_path / "compose.yaml").read_text())["services"]
    assert list(services) == ["replica-1", "replica-2", "replica-3", "nginx", "prometheus"]
    assert "server replica-3:8501 " in (tmp_path / "nginx.conf").read_text()
    settings.write_text("nginx: [unclosed")
    assert main(["deploy", "--settings", str(settings)]) == 2
    assert capsys.readouterr().err.startswith(f"imgcls: invalid configuration:\n  - {settings} "
                                              "is not valid YAML")


@pytest.mark.parametrize("megabytes", [16, 0.3])
def test_nginx_accepts_exactly_the_request_sizes_the_replicas_accept(megabytes):
    from imgcls_utils.serving.settings import ServeSettings

    settings = load_deployment(SETTINGS_PATH)
    settings = replace(settings, serve=tuple((key, megabytes if key == "max_request_mb" else value)
                                             for key, value in settings.serve))
    replica = ServeSettings.from_config(load_config(REPO_ROOT / CONFIG_RELATIVE_PATH,
                                                    set_options=settings.serve_options()))
    conf = nginx_conf(settings, ["127.0.0.1:1"], "127.0.0.1:2")
    assert f"client_max_body_size {replica.max_request_bytes};" in conf


@needs_nginx
def test_nginx_accepts_the_rendered_config(tmp_path):
    conf = nginx_conf(load_deployment(SETTINGS_PATH), ["127.0.0.1:8501", "127.0.0.1:8502"],
                      "127.0.0.1:8080")
    (tmp_path / "nginx.conf").write_text(conf)
    done = subprocess.run([nginx_executable(), "-t", "-p", str(tmp_path), "-c",
                           str(tmp_path / "nginx.conf"), "-e", str(tmp_path / "error.log"), "-g",
                           f"pid {tmp_path / 'nginx.pid'};"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for directive in ("keepalive 32;", "proxy_http_version 1.1;", 'proxy_set_header Connection "";',
                      "proxy_next_upstream error timeout http_502 http_503 http_504 "
                      "non_idempotent;", "add_header X-Upstream $upstream_addr always;"):
        assert directive in conf
    assert not re.search(r"^\s*(daemon|pid|user)\s", conf, re.MULTILINE)


# ----------------------------------------------------------------------------- Dockerfile

def dockerfile_instructions() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    return [tuple(line.split(None, 1)) for line in text.splitlines()
            if line.strip() and not line.startswith("#")]


def instruction(name: str) -> list[str]:
    return [arguments for found, arguments in dockerfile_instructions() if found == name]


def pip_commands(lines: list[str]) -> list[list[str]]:
    """The words of each ``python -m pip ...`` command among shell ``lines``."""
    commands = [part.strip() for line in lines for part in line.split("&&")]
    return [shlex.split(command) for command in commands if " -m pip " in command]


def split_extras(requirement: str) -> tuple[str, set[str]]:
    path, _, extras = requirement.partition("[")
    return path, set(extras.rstrip("]").split(","))


def test_the_dockerfile_installs_pyprojects_serving_install_on_environment_ymls_python():
    """The same pip and options as the Makefile (which installs every dependency from
    requirements.lock, then the package without dependencies); the image's requirements are
    pyproject's base and serving ones with TensorFlow as tensorflow-cpu."""
    import tomllib

    sys.path.insert(0, str(REPO_ROOT / "Model_Serving"))
    try:
        from requirements import requirements
    finally:
        sys.path.pop(0)
    makefile = [line.strip().replace("$(PYTHON)", "python")
                for line in (REPO_ROOT / "Makefile").read_text().splitlines()]
    make_upgrade, make_lock, make_package = pip_commands(makefile)[:3]  # then `make lock`'s uv
    docker = pip_commands(instruction("RUN"))
    assert docker[0] == make_upgrade == shlex.split("python -m pip install --quiet --upgrade pip")
    assert make_lock[-2:] == ["-r", "requirements.lock"]
    assert make_package == shlex.split("python -m pip install --quiet --no-deps -e .")
    assert docker[-1] == shlex.split("python -m pip install --quiet --no-deps .")
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    with_deps, alone = requirements(project, "tensorflow-cpu")
    wanted = [*project["project"]["dependencies"], *project["project"]["optional-dependencies"][
        "serving"]]
    assert sorted(with_deps + alone) == sorted(line.replace("tensorflow==", "tensorflow-cpu==")
                                               for line in wanted)
    assert alone == [line for line in wanted if line.startswith("tensorflow-serving-api")]
    python = re.search(r"- python=(\S+)", (REPO_ROOT / "environment.yml").read_text())[1]
    assert instruction("ARG")[0] == f"BASE=python:{python}-slim"


def test_the_build_context_holds_what_the_dockerfile_copies():
    sources = [word for copy in instruction("COPY") if not copy.startswith("--from")
               for word in copy.split()[:-1]]
    kept = [line[1:].rstrip("/") for line in (REPO_ROOT / ".dockerignore").read_text()
            .splitlines() if line.startswith("!")]
    assert sorted(source.rstrip("/") for source in sources) == sorted(kept)
    assert all((REPO_ROOT / source).exists() for source in sources)
    assert "README.md" in sources  # pyproject.toml's readme: pip refuses to build without it
    assert 'readme = "README.md"' in (REPO_ROOT / "pyproject.toml").read_text()


def test_the_image_and_every_replica_run_arguments_imgcls_serve_accepts():
    entrypoint, command = (json.loads(instruction(name)[0]) for name in ("ENTRYPOINT", "CMD"))
    assert entrypoint == ["imgcls", "serve"]
    healthcheck = json.loads(instruction("HEALTHCHECK")[0].split(" CMD ", 1)[1])
    assert healthcheck == ["python", "-c", HEALTHCHECK_SCRIPT.format(port=8501)]
    assert instruction("EXPOSE") == ["8501 8500"] and instruction("USER") == ["10001"]  # numeric:
    # Kubernetes' runAsNonRoot can check it
    services = yaml.safe_load(compose_file(load_deployment(SETTINGS_PATH)))["services"]
    replicas = [service["command"] for name, service in services.items()
                if name.startswith("replica-")]
    for arguments in [command, *replicas]:
        args = _parser().parse_args([*entrypoint[1:], *arguments])
        assert (args.handler.__name__, args.host) == ("cmd_serve", "0.0.0.0")
        load_config(REPO_ROOT / CONFIG_RELATIVE_PATH, set_options=args.set)  # valid overrides
    keyed = [service["environment"] for name, service in services.items()
             if name.startswith("replica-")]
    assert keyed == [["IMGCLS_API_KEY"]] * len(replicas)  # passed through, never written here


# ----------------------------------------------------------------------------- failover

REQUESTS = 300
CLIENTS = 4
KILL_AFTER = REQUESTS // 3


def digit_uploads(cfg) -> list[tuple[str, bytes]]:
    files = sorted((cfg.path("raw_dir") / "digits").glob("*/*.png"))[:40]
    return [(path.name, path.read_bytes()) for path in files]


def send_stream(url: str, uploads, replica_killed: threading.Event,
                requests: int = REQUESTS) -> list:
    """``requests`` POST /predict by ``CLIENTS`` threads: (started, status, X-Upstream, body)
    each; ``replica_killed`` is set once a third of them (``KILL_AFTER`` of ``REQUESTS``)
    are answered."""
    answers, lock, counter = [], threading.Lock(), iter(range(requests))
    kill_after = requests * KILL_AFTER // REQUESTS
    deadline = time.monotonic() + 120

    def client() -> None:
        with httpx.Client(timeout=30) as session:
            while time.monotonic() < deadline:
                with lock:
                    index = next(counter, None)
                if index is None:
                    return
                name, data = uploads[index % len(uploads)]
                started = time.monotonic()
                try:
                    response = session.post(f"{url}/predict", files={"file": (name, data)})
                    answer = (started, response.status_code, response.headers.get("x-upstream"),
                              response.text)
                except httpx.HTTPError as error:
                    answer = (started, 0, None, repr(error))
                with lock:
                    answers.append(answer)
                    if len(answers) == kill_after:
                        replica_killed.set()

    run_threads(client, CLIENTS)
    return answers


@needs_nginx
def test_nginx_answers_every_request_while_a_replica_is_killed(served_model, tmp_path):
    cfg, _, version = served_model
    export = tmp_path / "exports" / version.parent.name
    shutil.copytree(version, export / "1")
    config = cfg.root / CONFIG_RELATIVE_PATH
    settings = load_deployment(SETTINGS_PATH)
    port = free_loopback_port()
    (tmp_path / "nginx").mkdir()
    options = settings.serve_options()
    with live_servers(export, config, [tmp_path / "a.log", tmp_path / "b.log"],
                      *options) as (survivor, victim):
        upstreams = [server.url.removeprefix("http://") for server in (survivor, victim)]
        conf = nginx_conf(settings, upstreams, f"127.0.0.1:{port}")
        with local_nginx(conf, tmp_path / "nginx", port):
            replica_killed, killed_at = threading.Event(), []

            def kill_victim() -> None:
                assert replica_killed.wait(timeout=60)
                victim.process.send_signal(signal.SIGKILL)
                victim.process.wait(timeout=10)
                killed_at.append(time.monotonic())

            killer = threading.Thread(target=kill_victim)
            killer.start()
            answers = send_stream(f"http://127.0.0.1:{port}", digit_uploads(cfg), replica_killed)
            killer.join()
            page = httpx.get(f"http://127.0.0.1:{port}/")  # its relative urls reach the replicas
            assert page.status_code == 200 and 'action="predict"' in page.text
    failed = [answer for answer in answers if answer[1] != 200 or '"predictions"' not in answer[3]]
    assert len(answers) == REQUESTS and failed == []
    answered_by = [(started, upstream.split(", ")[-1]) for started, _, upstream, _ in answers]
    before = {address for started, address in answered_by if started < killed_at[0]}
    after = {address for started, address in answered_by if started > killed_at[0]}
    assert before == set(upstreams) and after == {upstreams[0]}
    log = nginx_access_log(tmp_path / "nginx")
    assert len(log) == REQUESTS + 1 and {line["status"] for line in log} == {200}
    retried = [line for line in log if ", " in line["upstream_addr"]]
    assert retried, "no request reached the killed replica and was retried"
    assert all(line["upstream_addr"].endswith(upstreams[0]) and line["request_time"] >= 0
               and line["upstream_status"].endswith("200") for line in retried)
