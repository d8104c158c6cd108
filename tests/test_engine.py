"""The data stages on a Ray cluster give the same bytes as in this process, and survive a killed
worker. These tests need the scale extra (pip install 'imgcls[scale]'; make test installs it)."""

import threading
import time

import psutil
import pytest

from imgcls_utils import data_utils
from imgcls_utils.data.processed import process_scan
from imgcls_utils.config import ConfigError
from imgcls_utils.data import engine as engines
from imgcls_utils.data.engine import Engine
from imgcls_utils.errors import UserError
from tests.conftest import write_image
from tests.sample_files import make_messy_folder

ray_needed = pytest.mark.skipif(not engines.ray_installed(), reason="Ray is not installed: "
                                "pip install 'imgcls[scale]' (make test installs it)")
OUTPUTS = ("split.csv", "dataset.json")


@pytest.fixture(scope="module")
def ray_engine():
    """A Ray cluster of two nodes of one core each, started on this machine with Ray's own
    cluster utilities, and the engine that joins it as a cluster is joined (its address in
    ``engine.options``): tasks run on both nodes and write into the same folders."""
    import ray

    cluster = two_node_cluster()
    yield Engine(engines.RAY, options={"address": cluster.address})
    ray.shutdown()
    cluster.shutdown()


def two_node_cluster():
    """Ray waits a fixed 30 s for a node to register, which a machine busy with other work can
    exceed: a node that timed out is started again, as the engine does (START_ATTEMPTS)."""
    from ray.cluster_utils import Cluster

    cluster = Cluster()
    for node in range(2):
        for attempt in range(engines.START_ATTEMPTS):
            try:
                cluster.add_node(num_cpus=1)
                break
            except Exception as error:  # Ray raises a bare Exception for this one
                if "timed out during startup" not in str(error) or \
                        attempt == engines.START_ATTEMPTS - 1:
                    cluster.shutdown()
                    raise
    cluster.wait_for_nodes()
    return cluster


def built_files(processed) -> dict[str, bytes]:
    return {name: (processed.folder / name).read_bytes() for name in processed.files()}


def process_both_ways(cfg, ray_engine, tmp_path) -> tuple[dict, dict]:
    """The processed files of ``cfg`` built in this process and on Ray, each from scratch."""
    built = []
    for name, engine in (("local", Engine(engines.LOCAL)), ("ray", ray_engine)):
        processed_dir = tmp_path / name
        scan = data_utils.scan_image_folder(data_utils.resolve_source(cfg.data, cfg.path(
            "raw_dir")), cfg.data, processed_dir / "source.manifest", engine)
        assert scan.stats["engine"].startswith(name)
        built.append(built_files(process_scan(scan, cfg.data, processed_dir, engine)))
    return built[0], built[1]


@ray_needed
def test_the_digits_processed_on_ray_are_byte_identical(make_config, ray_engine, tmp_path):
    local, on_ray = process_both_ways(make_config(), ray_engine, tmp_path)
    assert set(local) == set(on_ray) >= {*OUTPUTS, "train-00000-of-00001.tfrecord"}
    assert local == on_ray


@ray_needed
def test_a_messy_folder_processed_on_ray_is_byte_identical(make_config, ray_engine, tmp_path):
    make_messy_folder(tmp_path / "messy", tmp_path / "outside")
    cfg = make_config(**{"data.source": str(tmp_path / "messy"), "data.max_pixels": 100_000,
                         "data.image_size": [16, 16]})
    local, on_ray = process_both_ways(cfg, ray_engine, tmp_path)
    assert local == on_ray and len(local) == 5


def kill_one_worker_running(name: str, killed: list, stop: threading.Event) -> None:
    """Kill the first Ray worker of this process's Ray instance seen running a task of the
    function ``name`` (Ray titles a busy worker ``ray::<function>``)."""
    while not stop.is_set():
        for child in psutil.Process().children(recursive=True):
            try:
                if child.cmdline() and child.cmdline()[0].startswith(f"ray::{name}"):
                    child.kill()
                    killed.append(name)
                    return
            except psutil.Error:
                pass
        time.sleep(0.01)


@ray_needed
def test_workers_killed_mid_job_are_retried_and_the_output_is_the_same(make_config, ray_engine,
                                                                       tmp_path):
    folder = tmp_path / "images"
    for i in range(3000):
        write_image(folder / ("a", "b", "c")[i % 3] / f"{i:04d}.png", size=(24, 24), seed=i)
    cfg = make_config(**{"data.source": str(folder), "data.image_size": [16, 16]})
    killed, stop = [], threading.Event()
    killers = [threading.Thread(target=kill_one_worker_running, args=(name, killed, stop))
               for name in ("inspect_batch", "write_shard")]
    for killer in killers:
        killer.start()
    try:
        local, on_ray = process_both_ways(cfg, ray_engine, tmp_path)
    finally:
        stop.set()
    assert sorted(killed) == ["inspect_batch", "write_shard"]
    assert local == on_ray and len(local) == 6  # 2 training shards, 1 each for val and test


def test_auto_runs_small_sources_here_and_large_ones_on_ray_when_installed(make_config):
    engine = Engine.from_config(make_config(**{"engine.min_files": 100}).engine)
    assert engine.for_files(99).runner == engines.LOCAL
    assert engine.for_files(100).runner == (engines.RAY if engines.ray_installed()
                                            else engines.LOCAL)
    assert Engine.from_config(make_config(**{"engine.runner": "local"}).engine).for_files(
        10**6).runner == engines.LOCAL


def test_ray_asked_for_but_not_installed_is_a_clear_error(make_config, monkeypatch):
    monkeypatch.setattr(engines, "ray_installed", lambda: False)
    with pytest.raises(UserError, match=r"engine.runner is ray, but Ray is not installed; "
                                        r"install it with pip install 'imgcls\[scale\]'"):
        Engine.from_config(make_config(**{"engine.runner": "ray"}).engine)


def test_engine_options_must_be_a_mapping(make_config):
    with pytest.raises(ConfigError, match="engine.options"):
        make_config(**{"engine.options": "address=auto"})
