"""Where and how training runs: distribution strategy, mixed precision, XLA, steps per execution.

``choose_hardware(cfg.hardware)`` turns the ``auto`` settings into concrete choices for this
machine (bench/README.md has the measurements behind them):

- strategy: ``TF_CONFIG`` set -> MultiWorkerMirroredStrategy (one process per machine), several
  GPUs -> MirroredStrategy, one GPU -> OneDeviceStrategy, no GPU -> TensorFlow's default strategy;
- precision: mixed_float16 on GPUs with compute capability >= 7.0 (tensor cores), mixed_bfloat16
  on CPUs with native bfloat16 (AVX512-BF16, AMX), else float32;
- XLA: on for GPUs, off on CPUs, where it made small CNNs slower.

Create it before anything else touches TensorFlow: a multi-worker strategy must configure the
collective ops before the runtime starts. Build and compile the model inside ``hardware.scope()``.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..config import Section
from ..errors import UserError
from ..quiet_tensorflow import keras, tf

FLOAT32 = "float32"
# How TensorFlow's class names read to users (multi-worker mirrored is implemented by collective
# all-reduce; the default strategy is no distribution at all).
STRATEGY_NAMES = {"KerasMultiWorkerStrategy": "MultiWorkerMirroredStrategy",
                  "_DefaultDistributionStrategy": "default"}
# Compute capability from which GPUs have tensor cores, where float16 math is much faster.
MIN_MIXED_FLOAT16_CAPABILITY = (7, 0)
CPUINFO = Path("/proc/cpuinfo")
BFLOAT16_CPU_FLAGS = {"avx512_bf16", "amx_bf16"}


class HardwareError(UserError):
    """A ``hardware.*`` setting this machine cannot honour, naming the key and the fix."""


@dataclass(frozen=True)
class Hardware:
    """The concrete choices for one training run."""

    strategy: tf.distribute.Strategy
    precision: str
    jit_compile: bool
    steps_per_execution: int
    deterministic: bool = False

    @property
    def is_multi_worker(self) -> bool:
        return isinstance(self.strategy, tf.distribute.MultiWorkerMirroredStrategy)

    @property
    def is_chief(self) -> bool:
        """Whether this process writes the model folder (always, except in multi-worker runs,
        where only the chief does; the other workers train in step and write nothing)."""
        if not self.is_multi_worker:
            return True
        resolver = self.strategy.cluster_resolver
        cluster = resolver.cluster_spec().as_dict()
        if "chief" in cluster:
            return resolver.task_type == "chief"
        return resolver.task_type == "worker" and resolver.task_id == 0

    @property
    def strategy_name(self) -> str:
        name = type(self.strategy).__name__
        return STRATEGY_NAMES.get(name, name)

    @property
    def devices(self) -> list[str]:
        if self.strategy is tf.distribute.get_strategy():  # the default: TensorFlow's first device
            return [tf.config.list_logical_devices()[0].name]
        return list(self.strategy.extended.worker_devices)

    @contextmanager
    def scope(self):
        """Build and compile models in here: variables go where the strategy puts them, and
        layers take the chosen precision (the previous global precision is restored after)."""
        previous = keras.config.dtype_policy().name
        keras.config.set_dtype_policy(self.precision)
        try:
            with self.strategy.scope():
                yield
        finally:
            keras.config.set_dtype_policy(previous)

    def shardable(self, dataset):
        """``dataset`` set up to be split between workers element by element: each split is
        one or a few files, too few for TensorFlow's default of giving each worker whole files."""
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        return dataset.with_options(options)

    def describe(self) -> str:
        """One line for the training log: what was chosen."""
        return (f"strategy {self.strategy_name} ({self.strategy.num_replicas_in_sync} "
                f"replica(s)), devices {', '.join(self.devices)}, precision {self.precision}, "
                f"XLA {'on' if self.jit_compile else 'off'}, "
                f"steps_per_execution {self.steps_per_execution}"
                + (", deterministic ops" if self.deterministic else ""))

    def to_dict(self) -> dict:
        """The choices, as recorded in the model folder's manifest."""
        return {"strategy": self.strategy_name,
                "replicas": self.strategy.num_replicas_in_sync, "devices": self.devices,
                "precision": self.precision, "jit_compile": self.jit_compile,
                "steps_per_execution": self.steps_per_execution,
                "deterministic": self.deterministic}


class KerasMultiWorkerStrategy(tf.distribute.MultiWorkerMirroredStrategy):
    """MultiWorkerMirroredStrategy whose ``reduce`` takes what Keras 3.15's ``fit`` gives it;
    without this, multi-worker ``fit`` fails (keras-team/keras#20585)."""

    def reduce(self, reduce_op, value, axis=None):
        if tf.nest.is_nested(value):
            # Keras builds the model from one input batch, of which only the shapes matter; the
            # workers' batches can differ in size, so each keeps its own, with no collective op.
            return tf.nest.map_structure(lambda item: self.experimental_local_results(item)[0],
                                         value)
        if axis is not None and len(self.experimental_local_results(value)[0].shape) == 0:
            axis = None  # Keras asks for axis 0 of scalar metrics: their mean across replicas
        return super().reduce(reduce_op, value, axis)


def choose_hardware(hardware: Section) -> Hardware:
    """The concrete choices for the ``hardware`` section's settings on this machine."""
    gpus = tf.config.list_physical_devices("GPU")
    strategy = _strategy(hardware.strategy, gpus)
    on_gpu = bool(gpus) and hardware.strategy != "cpu"
    # Deterministic ops cost 2% of a CPU training run (bench/README.md); on GPUs they cost more.
    deterministic = not on_gpu if hardware.deterministic == "auto" else hardware.deterministic
    _set_op_determinism(deterministic)
    return Hardware(strategy=strategy,
                    precision=_precision(hardware.mixed_precision, gpus if on_gpu else []),
                    jit_compile=on_gpu if hardware.jit_compile == "auto" else hardware.jit_compile,
                    steps_per_execution=hardware.steps_per_execution,
                    deterministic=deterministic)


def _set_op_determinism(enabled: bool) -> None:
    """TensorFlow's switch is process-wide, so a run without determinism after one with it (a
    re-run notebook, a benchmark) turns it off again; TensorFlow exports only the way on."""
    from tensorflow.python.framework import config as tf_config

    (tf_config.enable_op_determinism if enabled else tf_config.disable_op_determinism)()


def _strategy(choice: str, gpus: list) -> tf.distribute.Strategy:
    if choice == "auto":
        choice = ("multi_worker" if _cluster_workers() > 1 else
                  "mirrored" if len(gpus) > 1 else "gpu" if gpus else "default")
    if choice == "gpu" and not gpus:
        raise HardwareError("hardware.strategy = gpu but TensorFlow sees no GPU on this machine; "
                            "use auto or cpu, or install the GPU build of TensorFlow")
    if choice == "multi_worker" and not os.environ.get("TF_CONFIG"):
        raise HardwareError("hardware.strategy = multi_worker needs the TF_CONFIG environment "
                            "variable describing the cluster (see the README's multi-machine "
                            "section); use auto for a single machine")
    if choice == "multi_worker":
        return KerasMultiWorkerStrategy()
    if choice == "mirrored":
        return tf.distribute.MirroredStrategy()
    if choice in ("gpu", "cpu"):
        return tf.distribute.OneDeviceStrategy("/gpu:0" if choice == "gpu" else "/cpu:0")
    return tf.distribute.get_strategy()


def _cluster_workers() -> int:
    """How many tasks TF_CONFIG's cluster has (0 when it is not set)."""
    config = os.environ.get("TF_CONFIG")
    if not config:
        return 0
    try:
        cluster = json.loads(config)["cluster"]
    except (ValueError, KeyError, TypeError):
        raise HardwareError("the TF_CONFIG environment variable is not valid JSON with a "
                            "'cluster' entry; fix or unset it") from None
    return sum(len(tasks) for tasks in cluster.values())


def _precision(choice: str, gpus: list) -> str:
    if choice != "auto":
        return choice
    if not gpus:
        return "mixed_bfloat16" if cpu_has_native_bfloat16() else FLOAT32
    capabilities = [tf.config.experimental.get_device_details(gpu).get("compute_capability", (0, 0))
                    for gpu in gpus]
    fast_float16 = min(capabilities) >= MIN_MIXED_FLOAT16_CAPABILITY
    return "mixed_float16" if fast_float16 else FLOAT32


def cpu_has_native_bfloat16(cpuinfo: Path | None = None) -> bool:
    """Whether the CPU computes in bfloat16 natively (x86 AVX512-BF16 or AMX-BF16), where
    oneDNN runs bfloat16 convolutions faster than float32. Elsewhere it is emulated, so
    ``auto`` keeps float32."""
    try:
        text = (cpuinfo or CPUINFO).read_text()
        flags = {flag for line in text.splitlines() if line.startswith("flags")
                 for flag in line.split(":", 1)[1].split()}
    except OSError:  # not Linux: no way to tell without a dependency, so stay with float32
        return False
    return bool(BFLOAT16_CPU_FLAGS & flags)
