import json
import os
import socket
import subprocess
import sys

import pytest

from imgcls_utils import data_utils, model_utils
from imgcls_utils.model_utils import HardwareError
from imgcls_utils.quiet_tensorflow import keras, tf
from imgcls_utils.training import hardware

ON_CPU = not tf.config.list_physical_devices("GPU")


@pytest.mark.skipif(not ON_CPU, reason="the automatic choices for a machine without GPU")
@pytest.mark.parametrize("flags, precision", [("fpu avx2 avx512f", "float32"),
                                              ("fpu avx2 avx512f avx512_bf16", "mixed_bfloat16"),
                                              ("fpu amx_bf16 amx_tile", "mixed_bfloat16")])
def test_auto_on_cpu_means_default_strategy_no_xla_and_bfloat16_where_native(
        make_config, monkeypatch, tmp_path, flags, precision):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    monkeypatch.setattr(hardware, "CPUINFO", cpuinfo)
    chosen = model_utils.choose_hardware(make_config().hardware)
    assert chosen.strategy is tf.distribute.get_strategy() and chosen.is_chief
    assert (chosen.precision, chosen.jit_compile, chosen.steps_per_execution) == (precision, False, 1)
    assert chosen.describe() == ("strategy default (1 replica(s)), devices /device:CPU:0, "
                                 f"precision {precision}, XLA off, steps_per_execution 1, "
                                 "deterministic ops")
    assert chosen.to_dict()["strategy"] == "default" and chosen.deterministic


def test_op_determinism_follows_each_run_s_choice(make_config):
    """TensorFlow's switch is process-wide: a run without determinism after one with it (a
    re-run notebook cell) must not stay deterministic."""
    from tensorflow.python.framework.config import is_op_determinism_enabled

    for deterministic in ("auto", False, True, False):
        chosen = model_utils.choose_hardware(
            make_config(**{"hardware.deterministic": deterministic}).hardware)
        assert is_op_determinism_enabled() == chosen.deterministic == (deterministic is not False)


def test_without_cpuinfo_the_cpu_stays_float32(tmp_path):
    assert not hardware.cpu_has_native_bfloat16(tmp_path / "missing")


def test_explicit_choices_win(make_config):
    chosen = model_utils.choose_hardware(make_config(**{
        "hardware.strategy": "cpu", "hardware.mixed_precision": "mixed_bfloat16",
        "hardware.jit_compile": True, "hardware.steps_per_execution": 4}).hardware)
    assert isinstance(chosen.strategy, tf.distribute.OneDeviceStrategy)
    assert chosen.devices == ["/job:localhost/replica:0/task:0/device:CPU:0"]
    assert (chosen.precision, chosen.jit_compile, chosen.steps_per_execution) == \
        ("mixed_bfloat16", True, 4)


def test_the_precision_applies_inside_the_scope_only(make_config):
    chosen = model_utils.choose_hardware(make_config(**{"hardware.mixed_precision": "mixed_float16"}).hardware)
    with chosen.scope():
        assert keras.config.dtype_policy().name == "mixed_float16"
    assert keras.config.dtype_policy().name == "float32"


@pytest.mark.parametrize("strategy, env, message", [
    ("multi_worker", None, "needs the TF_CONFIG environment variable"),
    ("auto", "not json", "TF_CONFIG environment variable is not valid JSON"),
] + ([("gpu", None, "sees no GPU on this machine")] if ON_CPU else []))
def test_impossible_hardware_settings_are_clear_errors(make_config, monkeypatch, strategy, env,
                                                       message):
    if env is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", env)
    with pytest.raises(HardwareError, match=message):
        model_utils.choose_hardware(make_config(**{"hardware.strategy": strategy}).hardware)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_workers_train_together_and_only_the_chief_saves(project, make_config, class_folder):
    settings = {"data.source": str(class_folder), "data.image_size": [16, 16],
                "model.conv_filters": [8], "train.epochs": 2, "train.min_steps_per_epoch": 1,
                "train.verbose": 0}
    # Workers sharing a disk must find the data processed (see the README's multi-machine part).
    data_utils.process_data(make_config(**settings))
    cluster = {"worker": [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]}
    workers = [subprocess.Popen(
        [sys.executable, "-m", "imgcls_utils.cli", "train",
         *[f"--set={key}={json.dumps(value)}" for key, value in settings.items()]],
        cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "TF_CONFIG": json.dumps({"cluster": cluster,
                                                    "task": {"type": "worker", "index": index}})})
        for index in range(2)]
    (chief_out, chief_err), (other_out, other_err) = [w.communicate(timeout=300) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], chief_err + other_err
    assert "strategy MultiWorkerMirroredStrategy (2 replica(s))" in chief_out
    assert "model folder:" in chief_out and "the chief worker evaluates and saves" in other_out
    folders = sorted(p.name for p in (project / "Trained_Models").iterdir())
    assert len(folders) == 1 and not folders[0].endswith(".resumable")
    manifest = json.loads((project / "Trained_Models" / folders[0] / "manifest.json").read_text())
    assert manifest["hardware"]["strategy"] == "MultiWorkerMirroredStrategy"
    assert manifest["hardware"]["replicas"] == 2
