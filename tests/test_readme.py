"""Every command the README prints works as printed: the quick ones are run in a scratch copy of
the project, the long ones (Fashion-MNIST, a cluster, a model folder of your own) and the
notebook runs (run for real by test_corpus.py, test_notebooks.py and nbval) have their arguments
checked by the same parser and config validation the command uses."""

import os
import re
import shlex
import shutil
import subprocess
import tomllib

import pytest
import yaml

from imgcls_utils.cli import _parser, _sweep_from_args
from imgcls_utils.config import CONFIG_RELATIVE_PATH, CONFIG_VARIABLE, load_config, notebook_config
from imgcls_utils.experiments.sweep import validate_sweep
from tests.conftest import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()
# Commands that need what a test cannot have: a large dataset, a cluster, your own files.
LONG = ("fashion-mnist", "TF_CONFIG=", "--resume", "imgcls predict", "imgcls explain", "imgcls cv",
        "apt-get install", "imgcls export", "imgcls serve", "curl ", "docker run", "docker compose",
        "kubectl ", "engine.runner=ray", "ray start", "ray job", "pip install")
# What `imgcls serve` answers (tests/test_server.py sends these requests to a real server).
# Notebook runs, each run for real elsewhere: `imgcls run` by test_corpus.py, papermill on
# Model_Training by test_notebooks.py, a sweep by test_sweep.py, every notebook by nbval.
NOTEBOOK_RUNS = ("imgcls run --set train.epochs", "papermill ", "imgcls sweep")
SERVED_PATHS = re.compile(r"/v1/models/\w+(:predict|/metadata)?|/predict|/healthz|/metrics")


def fenced_commands(language: str = "bash") -> list[str]:
    """Each command of the README's ``language`` code blocks, continuation lines joined and
    comments dropped."""
    blocks = re.findall(rf"```{language}\n(.*?)```", README, re.S)
    text = "\n".join(blocks).replace("\\\n", " ")
    lines = (shlex.split(line, comments=True) for line in text.splitlines())
    return [shlex.join(words) for words in lines if words]


def transcripts() -> list[tuple[str, list[str]]]:
    """The README's ``$ command`` blocks: the command and the lines it prints."""
    found = []
    for block in re.findall(r"```\n(\$ .*?)```", README, re.S):
        command, *output = block.strip().splitlines()
        found.append((command.removeprefix("$ "), [line for line in output if line != "..."]))
    return found


@pytest.fixture
def scratch(tmp_path):
    """A working folder that looks like the project (config, notebooks, .venv) but keeps every
    output to itself."""
    (tmp_path / "config").mkdir()
    shutil.copy(REPO_ROOT / CONFIG_RELATIVE_PATH, tmp_path / CONFIG_RELATIVE_PATH)
    for name in ("notebooks", ".venv"):
        (tmp_path / name).symlink_to(REPO_ROOT / name)
    shutil.copytree(REPO_ROOT / "Deployment", tmp_path / "Deployment")  # imgcls deploy writes
    return tmp_path


def run(command: str, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, CONFIG_VARIABLE: str(cwd / CONFIG_RELATIVE_PATH)}
    return subprocess.run(command, shell=True, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def check_arguments(command: str) -> None:
    """What the command would check before doing any work: its arguments and its config."""
    words = shlex.split(command)
    while "=" in words[0]:  # VARIABLE=value prefixes
        words.pop(0)
    program, args = os.path.basename(words[0]), words[1:]
    if program == "imgcls":
        parsed = _parser().parse_args(args)
        if getattr(parsed, "set", None):
            load_config(REPO_ROOT / CONFIG_RELATIVE_PATH, set_options=parsed.set)
        if parsed.command == "sweep":  # every run's config, as the command checks it first
            validate_sweep(_sweep_from_args(parsed, 42), REPO_ROOT / CONFIG_RELATIVE_PATH)
    elif program == "papermill":
        check_papermill_arguments(args)
    elif program == "pip":  # an extra of this package
        extras = re.fullmatch(r"(?:imgcls|\.)\[(\w+)\]", args[-1])[1]
        assert args[0] == "install" and extras in tomllib.loads(
            (REPO_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    elif program == "ray" and args[0] == "start":  # the head node, or one joining it
        assert "--head" in args or any(arg.startswith("--address=") for arg in args), args
    elif program == "ray":  # a job on the cluster: the command after -- is checked
        assert args[:2] == ["job", "submit"] and "--" in args, args
        check_arguments(shlex.join(args[args.index("--") + 1:]))
    elif program in ("apt-get", "sudo"):
        assert "dataset-fashion-mnist" in args
    elif program == "curl":
        url = next(arg for arg in args if arg.startswith("http"))
        assert url.startswith("http://127.0.0.1:8501/"), url  # serve.host and serve.port
        assert SERVED_PATHS.fullmatch(url.removeprefix("http://127.0.0.1:8501")), url
    elif program == "docker" and args[0] == "compose":  # the file imgcls deploy writes
        assert (REPO_ROOT / args[args.index("-f") + 1]).is_file() and "up" in args
    elif program == "kubectl":  # the manifests imgcls deploy --target kubernetes writes
        assert args[:2] == ["apply", "-f"] and (REPO_ROOT / args[2]).is_file(), args
    elif program == "docker":  # TensorFlow Serving's image on an export folder
        mount = args[args.index("-v") + 1]
        assert re.fullmatch(r'"?\$PWD/exports/(\w+):/models/\1"?', mount), mount
        assert f"MODEL_NAME={mount.split('/')[-1].strip(chr(34))}" in args
    else:
        pytest.fail(f"no argument check for {program}: {command}")


def check_papermill_arguments(args: list[str]) -> None:
    """The notebook exists and ``-p``/``-y`` name its parameters with values the config takes."""
    notebook, parameters = REPO_ROOT / args[0], {}
    assert notebook.is_file(), notebook
    for index, word in enumerate(args):
        if word == "-p":
            parameters[args[index + 1]] = yaml.safe_load(args[index + 2])
        elif word == "-y":
            parameters.update(yaml.safe_load(args[index + 1]))
    notebook_config(REPO_ROOT / CONFIG_RELATIVE_PATH, **parameters)


COMMANDS = fenced_commands()


def test_the_readme_shows_the_commands_a_user_needs():
    programs = {os.path.basename(shlex.split(c)[0]) for c in COMMANDS if "=" not in c.split()[0]}
    assert {"make", "imgcls", "papermill"} <= programs
    assert any("papermill" in c and "-y" in c for c in COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_works_as_printed(command, scratch):
    if any(marker in command for marker in LONG + NOTEBOOK_RUNS):
        check_arguments(command)
        return
    if command.startswith("make "):  # the target exists (test_makefile.py runs the small ones)
        done = run(f"make --dry-run -C {REPO_ROOT} {command.split()[1]}", scratch)
    else:
        done = run(command, scratch)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]


@pytest.mark.parametrize("command, printed", transcripts())
def test_readme_transcript_matches_what_the_command_prints(command, printed, scratch):
    if any(marker in command for marker in LONG) or "data.source=/tmp/" in command:
        check_arguments(command)
        return
    done = run(command.replace("imgcls ", ".venv/bin/imgcls ", 1), scratch)
    shown = (done.stdout + done.stderr).splitlines()
    assert [line for line in printed if line not in shown] == []
