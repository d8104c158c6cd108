"""Podman on this kind of machine, for the tests that build and run the project's containers.

Nothing is pulled from a container registry: the base image is Debian bookworm made with
``debootstrap --variant=minbase`` (Debian's Python inside it), imported with ``podman import``;
the serving image is ``Model_Serving/Dockerfile`` built on it, and nginx's image is Debian's
nginx on the same base. What this machine needs, found step by step: runc (crun cannot set
``RLIMIT_NOFILE`` here, then refuses hybrid cgroups), the ``cgroupfs`` cgroup manager, and
ulimits no higher than the host's, in a ``containers.conf`` written here and named by
``$CONTAINERS_CONF``; pip inside a build trusts the host's CA bundle (mounted, with a pip.conf
naming it, into every build step and never into the image). Podman's own storage keeps the
images and build layers between runs, so a second run rebuilds nothing that did not change.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.conftest import REPO_ROOT

BASE_IMAGE = "localhost/imgcls-test-base:bookworm"
SERVE_IMAGE = "localhost/imgcls-serve:test"
NGINX_IMAGE = "localhost/imgcls-test-nginx:bookworm"
DEBIAN_PACKAGES = ("podman", "runc", "debootstrap")
MISSING = ("podman, runc or debootstrap not installed, or not root: run `make test` as root (it "
           "apt-get installs them) or apt-get install podman runc debootstrap")
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# Left out of the base image: what apt and man pages need, never a server.
ROOTFS_EXCLUDES = ("./var/cache/apt/archives/*.deb", "./var/lib/apt/lists/*", "./usr/share/doc",
                   "./usr/share/man", "./usr/share/locale", "./usr/share/info")
NGINX_CONTAINERFILE = f"""\
FROM {BASE_IMAGE}
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \\
        --no-install-recommends nginx-light >/dev/null \\
 && rm -rf /var/lib/apt/lists/* && ln -sf /dev/stderr /var/log/nginx/error.log
CMD ["nginx", "-g", "daemon off;"]
"""
# What the test run measured, printed in pytest's summary (conftest.py).
TIMINGS: dict[str, str] = {}


def tools_missing() -> bool:
    """Whether this machine cannot build and run the containers (not root, or no podman,
    runc or debootstrap)."""
    on_path = all(shutil.which(tool) or shutil.which(tool, path="/usr/sbin")
                  for tool in DEBIAN_PACKAGES)
    return os.geteuid() != 0 or not on_path


def containers_conf(folder: Path) -> Path:
    """A containers.conf for this machine in ``folder``: runc, cgroupfs, and the host's own
    open-file and process limits (a container may not raise them; processes are capped at
    the kernel's pid_max, which runc cannot exceed here)."""
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    nproc = min(resource.getrlimit(resource.RLIMIT_NPROC)[1], pid_max)
    path = folder / "containers.conf"
    path.write_text(f'[containers]\ndefault_ulimits = ["nofile={nofile}:{nofile}", '
                    f'"nproc={nproc}:{nproc}"]\n\n[engine]\nruntime = "runc"\n'
                    f'cgroup_manager = "cgroupfs"\nevents_logger = "file"\n')
    return path


class Podman:
    """``podman`` with this machine's containers.conf; every call's output kept for errors."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.env = {**os.environ, "CONTAINERS_CONF": str(containers_conf(folder))}
        (folder / "pip.conf").write_text("[global]\ncert = /etc/ssl/certs/host-ca.crt\n")

    def run(self, *args: str, timeout: float = 600, check: bool = True,
            **kwargs) -> subprocess.CompletedProcess:
        done = subprocess.run(["podman", *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout, **kwargs)
        if check and done.returncode != 0:
            raise RuntimeError(f"podman {' '.join(args)} failed ({done.returncode}):\n"
                               f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return done

    def has_image(self, name: str) -> bool:
        return self.run("image", "exists", name, check=False).returncode == 0

    def image_size(self, name: str) -> int:
        return int(self.run("image", "inspect", "--format", "{{.Size}}", name).stdout)

    def build(self, tag: str, containerfile: Path, context: Path, *build_args: str,
              timeout: float = 3600) -> float:
        """``podman build`` (reusing cached layers), pip trusting the host's CA bundle in every
        step, in Docker's image format (OCI images drop HEALTHCHECK); the seconds it took."""
        started = time.monotonic()
        mounts = ["-v", f"{HOST_CA_BUNDLE}:/etc/ssl/certs/host-ca.crt:ro",
                  "-v", f"{self.folder / 'pip.conf'}:/etc/pip.conf:ro"]
        arguments = [argument for value in build_args for argument in ("--build-arg", value)]
        self.run("build", "--layers", "--format", "docker", *mounts, *arguments, "-f", str(containerfile), "-t", tag,
                 str(context), timeout=timeout)
        return time.monotonic() - started

    def inspect(self, container: str) -> dict:
        return json.loads(self.run("inspect", container).stdout)[0]


def base_image(podman: Podman) -> str:
    """Debian bookworm with its Python (``python3``, venv), made once with debootstrap and kept
    in podman's storage for the next runs."""
    if podman.has_image(BASE_IMAGE):
        TIMINGS["base image"] = "reused"
        return BASE_IMAGE
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="imgcls-rootfs-") as folder:
        root, archive = Path(folder) / "rootfs", Path(folder) / "rootfs.tar"
        _run(["debootstrap", "--variant=minbase", "--include=python3-venv", "bookworm",
              str(root)], timeout=1800)
        _run(["tar", "-C", str(root), "-cf", str(archive),
              *[f"--exclude={pattern}" for pattern in ROOTFS_EXCLUDES], "."])
        podman.run("import", "--change", 'CMD ["/bin/bash"]', str(archive), BASE_IMAGE)
    TIMINGS["base image"] = f"made with debootstrap in {time.monotonic() - started:.0f} s"
    return BASE_IMAGE


def _run(command: list[str], timeout: float = 600) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PATH": f"{os.environ['PATH']}:/usr/sbin"})
    if done.returncode != 0:
        raise RuntimeError(f"{command[0]} failed ({done.returncode}): {done.stdout[-2000:]}"
                           f"{done.stderr[-2000:]}")


def serve_image(podman: Podman) -> str:
    """The project's Model_Serving/Dockerfile built on the debootstrap base."""
    seconds = podman.build(SERVE_IMAGE, REPO_ROOT / "Model_Serving" / "Dockerfile", REPO_ROOT,
                           f"BASE={base_image(podman)}")
    size = podman.image_size(SERVE_IMAGE)
    TIMINGS["serving image"] = f"podman build took {seconds:.0f} s (unchanged layers reused), " \
                               f"{size / 1e9:.2f} GB"
    return SERVE_IMAGE


def nginx_image(podman: Podman) -> str:
    """Debian's nginx on the debootstrap base (the official nginx image cannot be pulled)."""
    containerfile = podman.folder / "nginx.Containerfile"
    containerfile.write_text(NGINX_CONTAINERFILE)
    podman.build(NGINX_IMAGE, containerfile, podman.folder, timeout=1200)
    return NGINX_IMAGE


def summary_lines(stats: dict) -> list[str]:
    """What pytest's summary says about the container tests: their own time and what they
    measured (nothing when none ran)."""
    reports = [report for reports in stats.values() for report in reports
               if getattr(report, "nodeid", "").startswith("tests/test_containers.py")]
    if not reports:
        return []
    seconds = sum(report.duration for report in reports)
    return [f"container tests: {seconds:.0f} s of this run",
            *(f"  {what}: {figure}" for what, figure in TIMINGS.items())]
