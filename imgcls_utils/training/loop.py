"""Training: seed, optimizer, learning-rate schedule, loss, callbacks, and the fit loop.

A run has one phase (``train``) or, for the transfer family, two: the new head is trained on the
frozen backbone, then the top ``transfer.fine_tune_layers`` backbone layers are fine-tuned at
``transfer.fine_tune_learning_rate`` for ``transfer.fine_tune_epochs`` more epochs. Epochs are
numbered across phases, so ``history.csv`` has one row per epoch of the whole run.

After every epoch the full state is saved in the run's ``.resumable`` folder (see
``checkpoints``); ``train_model`` on a folder that has it continues where it stopped.
"""

from __future__ import annotations

import math
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import Section
from ..data.input_pipeline import STATISTICS
from ..errors import UserError
from ..quiet_tensorflow import keras, tf
from .checkpoints import RunCheckpoint, RunState
from .hardware import Hardware
from .model_folders import TENSORBOARD_DIR
from .models import has_frozen_backbone, unfreeze_top_layers
from .progress import epoch_line


class TrainingDiverged(UserError):
    """The loss became NaN or infinite: the run is stopped and left unfinished."""


@dataclass(frozen=True)
class Phase:
    """One ``fit`` of a run: ``train`` (the whole model, or a transfer model's new head) or
    ``fine_tune`` (a transfer model's top backbone layers too)."""

    name: str
    epochs: int
    learning_rate: float
    warmup_epochs: int


def set_seed(seed: int) -> None:
    """One seed for Python, NumPy and TensorFlow (and so Keras weight initialisation)."""
    random.seed(seed)
    np.random.seed(seed)
    keras.utils.set_random_seed(seed)


# ----------------------------------------------------------------------------- compile

def training_phases(train: Section, transfer: Section | None = None) -> list[Phase]:
    """The phases of a run: fine-tuning too when given the ``transfer`` section of a model
    with a frozen backbone, and there are layers and epochs for it."""
    phases = [Phase("train", train.epochs, train.learning_rate, train.warmup_epochs)]
    if transfer is not None and transfer.fine_tune_layers and transfer.fine_tune_epochs:
        phases.append(Phase("fine_tune", transfer.fine_tune_epochs,
                            transfer.fine_tune_learning_rate, 0))
    return phases


def learning_rate_schedule(train: Section, phase: Phase, steps_per_epoch: int):
    """The phase's learning rate: a number (constant, or changed by reduce_on_plateau) or a
    per-step schedule (cosine decay after a linear warm-up; step decay)."""
    if train.lr_schedule == "cosine":
        warmup = min(phase.warmup_epochs, phase.epochs - 1) * steps_per_epoch
        return keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=phase.learning_rate / 100 if warmup else phase.learning_rate,
            warmup_target=phase.learning_rate if warmup else None, warmup_steps=warmup,
            decay_steps=phase.epochs * steps_per_epoch - warmup, alpha=0.01)
    if train.lr_schedule == "step":
        return keras.optimizers.schedules.ExponentialDecay(
            phase.learning_rate, decay_steps=train.step_decay_epochs * steps_per_epoch,
            decay_rate=train.step_decay_factor, staircase=True)
    return phase.learning_rate


def make_optimizer(train: Section, learning_rate) -> keras.optimizers.Optimizer:
    """``train.optimizer``: adam, adamw (decoupled weight decay) or sgd with momentum."""
    if train.optimizer == "adamw":
        return keras.optimizers.AdamW(learning_rate=learning_rate, weight_decay=train.weight_decay)
    if train.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate=learning_rate, momentum=train.momentum,
                                    nesterov=True)
    return keras.optimizers.Adam(learning_rate=learning_rate)


@keras.saving.register_keras_serializable(package="imgcls")
class SparseCategoricalCrossentropyWithSmoothing(keras.losses.Loss):
    """Cross-entropy for integer labels with label smoothing: Keras offers smoothing only for
    one-hot labels, so the labels are one-hot encoded here, inside the loss, and the data
    pipeline (and the accuracy metric) keep their integer labels."""

    def __init__(self, label_smoothing: float = 0.0, name: str = "smoothed_crossentropy",
                 **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = label_smoothing

    def call(self, y_true, y_pred):
        classes = keras.ops.shape(y_pred)[-1]
        one_hot = keras.ops.one_hot(keras.ops.cast(keras.ops.reshape(y_true, [-1]), "int32"),
                                    classes, dtype=y_pred.dtype)
        return keras.losses.categorical_crossentropy(one_hot, y_pred,
                                                     label_smoothing=self.label_smoothing)

    def get_config(self) -> dict:
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


def make_loss(train: Section) -> keras.losses.Loss:
    if train.label_smoothing:
        return SparseCategoricalCrossentropyWithSmoothing(train.label_smoothing)
    return keras.losses.SparseCategoricalCrossentropy()


def compile_model(model: keras.Model, train: Section, steps_per_epoch: int,
                  hardware: Hardware | None = None, phase: Phase | None = None) -> keras.Model:
    """Compile for ``phase`` (default: the first) with the configured optimizer, schedule and
    loss; ``steps_per_epoch`` sizes the per-step schedules. Call inside ``hardware.scope()``."""
    phase = phase or training_phases(train)[0]
    optimizer = make_optimizer(train, learning_rate_schedule(train, phase, steps_per_epoch))
    model.compile(optimizer=optimizer, loss=make_loss(train), metrics=["accuracy"],
                  jit_compile=hardware.jit_compile if hardware else False,
                  steps_per_execution=hardware.steps_per_execution if hardware else 1)
    return model


def local_copy(model: keras.Model, train: Section) -> keras.Model:
    """A multi-worker model's copy for this process alone (compiled, so that it saves like any
    other): the distributed model's ``predict`` would gather (and so repeat) every worker's
    predictions."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return compile_model(copy, train, steps_per_epoch=1)  # it is never trained


def class_weights(train: Section, label_counts: list[int]) -> dict[int, float] | None:
    """``train.class_weight`` for a training split with ``label_counts`` images per class:
    None, or with ``balanced`` weights that make every class count equally,
    ``total / (classes * count)`` (scikit-learn's rule), for the classes that occur."""
    if train.class_weight == "none":
        return None
    total, classes = sum(label_counts), len(label_counts)
    return {label: total / (classes * count) for label, count in enumerate(label_counts) if count}


# ----------------------------------------------------------------------------- batch norm

def updating_batch_norm_layers(model: keras.Model) -> list:
    """The batch-normalization layers whose moving statistics training updates (trainable ones;
    a frozen pretrained backbone's keep the statistics learned on its own data)."""
    found, layers = [], list(model.layers)
    while layers:
        layer = layers.pop(0)
        if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable:
            found.append(layer)
        layers.extend(getattr(layer, "layers", []))
    return found


class BatchNormStatistics:
    """Sets every updating batch-norm layer's moving mean and variance of ``model`` to the exact
    average over the batches of some images (what stochastic weight averaging does after
    averaging). A traced function runs a batch through the model in training mode with a
    momentum of 0, so that each layer's moving statistics become the batch's, and returns them
    for summing. It is traced once and reused by every refresh: run eagerly, the refresh took
    as long as the epoch's 50 training steps on the 8x8 digits. (Iterating the dataset inside
    the traced function instead makes TensorFlow 2.21 log an E0000 line about its parallel map
    under op determinism.)"""

    def __init__(self, model: keras.Model):
        self.model, self.layers = model, updating_batch_norm_layers(model)
        self.variables = [variable for layer in self.layers
                          for variable in (layer.moving_mean, layer.moving_variance)]
        self.batch_statistics = tf.function(self._batch_statistics, reduce_retracing=True)

    def _batch_statistics(self, batch):
        self.model(batch, training=True)
        return tuple(variable.value for variable in self.variables)

    def refresh(self, images) -> int:
        """Recompute the statistics over the batches of ``images``; returns the batches used."""
        if not self.layers:
            return 0
        momenta = [layer.momentum for layer in self.layers]
        totals, batches = None, 0
        try:
            for layer in self.layers:
                layer.momentum = 0.0  # read when traced: the moving statistics := the batch's
            for batches, batch in enumerate(images, start=1):
                statistics = self.batch_statistics(batch)
                totals = statistics if totals is None else [
                    total + value for total, value in zip(totals, statistics)]
        finally:
            for layer, momentum in zip(self.layers, momenta):
                layer.momentum = momentum
        for variable, total in zip(self.variables, totals or []):
            variable.assign(total / batches)
        return batches


def refresh_batch_norm_statistics(model: keras.Model, images) -> int:
    """``BatchNormStatistics(model).refresh(images)``: the updating batch-norm layers' moving
    statistics become the averages over the batches of ``images`` (a dataset); returns the
    batches used."""
    return BatchNormStatistics(model).refresh(images)


class BatchNormRefresh(keras.callbacks.Callback):
    """Recompute the batch-norm statistics before every validation, so the validation metrics,
    the checkpoints and the saved model all use statistics of the current weights.

    Why: the exponential moving averages lag. On the 1,257 training digits (20 steps per epoch,
    Keras' momentum of 0.99) the moving variance of the first layer was 2-16 times the true one
    after two epochs, and the model in inference mode predicted one class for every image
    (validation accuracy 0.10 while training accuracy was 0.61). On up to ``STATISTICS_IMAGES``
    images its cost is a few per cent of an epoch (``bench/training.py --only wrappers``);
    skipping it where the default momentum of 0.9 turns the averages over within an epoch
    (0.9 ** 60 steps) cost accuracy: the digits' seed 1 fell from 0.9889 to 0.9852 (16x16) and
    from 0.9963 to 0.9741 (32x32)."""

    def __init__(self, images):
        super().__init__()
        self.images = images
        self.statistics = None

    def on_train_begin(self, logs=None):
        self.statistics = BatchNormStatistics(self.model)

    def on_test_begin(self, logs=None):
        self.statistics.refresh(self.images)


# ----------------------------------------------------------------------------- fit

class StopOnNaN(keras.callbacks.Callback):
    """Raise ``TrainingDiverged`` at the first NaN or infinite training loss, so the run ends as
    failed (its ``.resumable`` folder stays unfinished) instead of saving a broken model."""

    def __init__(self, run_folder: Path):
        super().__init__()
        self.run_folder = run_folder
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise TrainingDiverged(
                f"the training loss became {float(loss)} in epoch {self.epoch + 1}; the run "
                f"stopped unfinished in {self.run_folder}; start a new run with a lower "
                "train.learning_rate (or check the data for broken images)")


class EpochLines(keras.callbacks.Callback):
    """One line per epoch (``progress.epoch_line``): what ``train.verbose: 2`` prints, in place
    of Keras' two. The estimate left assumes every remaining epoch runs."""

    def __init__(self, phase: str, epochs: int, started: float):
        super().__init__()
        self.phase, self.epochs, self.started = phase, epochs, started
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_started = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.monotonic() - self.epoch_started)
        remaining = (self.epochs - epoch - 1) * sum(self.seconds) / len(self.seconds)
        print(epoch_line(epoch + 1, self.epochs, self.phase, logs or {},
                         time.monotonic() - self.started, remaining), flush=True)


def training_callbacks(train: Section, run_folder: Path) -> list:
    """Early stopping, the plateau schedule when chosen, TensorBoard logs and stop-on-NaN.
    The best checkpoint, the history and the resume state are kept by ``RunCheckpoint``."""
    schedule = []
    if train.lr_schedule == "reduce_on_plateau":
        schedule.append(keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss", factor=train.reduce_lr_factor, patience=train.reduce_lr_patience,
            min_lr=train.learning_rate / 1000))
    return schedule + [
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=train.early_stopping_patience),
        keras.callbacks.TensorBoard(log_dir=str(run_folder / TENSORBOARD_DIR), write_graph=False,
                                    profile_batch=0),
        StopOnNaN(run_folder),
    ]


def train_model(model: keras.Model, datasets: dict, train: Section, transfer: Section,
                run_folder: Path, *, hardware: Hardware | None = None,
                class_weight: dict[int, float] | None = None, callbacks: list | None = None,
                identity: dict[str, str] | None = None) -> pd.DataFrame:
    """Fit every phase on ``datasets["train"]``, validating on ``datasets["val"]`` (with the
    batch-norm statistics recomputed on ``datasets["statistics"]`` first, when given), continuing
    from the state saved in ``run_folder`` if there is one (and, given the run's ``identity``,
    ``checkpoints.run_identity``, only if it is unchanged); the model ends with the weights of
    its best validation epoch.
    ``callbacks`` are added to the standard ones (``training_callbacks``). Returns the whole
    history, one row per epoch."""
    state = RunState.load(run_folder)
    if identity:
        state.check_unchanged(identity)
    if state.epochs_done():
        print(f"resuming {run_folder} after epoch {state.epochs_done()}", flush=True)
    steps_per_epoch = int(datasets["train"].cardinality())
    scope = hardware.scope if hardware else nullcontext
    phases = training_phases(train, transfer if has_frozen_backbone(model) else None)
    epochs, started = sum(phase.epochs for phase in phases), time.monotonic()
    for phase in phases:
        with scope():
            if phase.name == "fine_tune":
                unfreeze_top_layers(model, transfer.fine_tune_layers)
                compile_model(model, train, steps_per_epoch, hardware, phase)
            model.optimizer.build(model.trainable_variables)
            state.restore_weights(model, phase.name)
        if not state.finished(phase.name):
            _fit_phase(model, datasets, train, phase, state, class_weight,
                       [*(callbacks or []), *([EpochLines(phase.name, epochs, started)]
                                              if train.verbose == 2 else [])])
    return state.history()


def _fit_phase(model, datasets: dict, train: Section, phase: Phase, state: RunState,
               class_weight, extra_callbacks: list) -> None:
    standard = training_callbacks(train, state.run_folder)
    first_epoch = state.phase(phase.name)["first_epoch"]
    # The checkpoint goes last: it saves what the others did in the epoch (counters, logs).
    refresh = ([BatchNormRefresh(datasets[STATISTICS])]
               if STATISTICS in datasets and updating_batch_norm_layers(model) else [])
    callbacks = [*refresh, *standard, *extra_callbacks, RunCheckpoint(state, phase.name, standard)]
    model.fit(datasets["train"], validation_data=datasets["val"], initial_epoch=state.epochs_done(),
              epochs=first_epoch + phase.epochs, class_weight=class_weight, callbacks=callbacks,
              verbose=1 if train.verbose == 1 else 0,  # 2: EpochLines' one line per epoch
              shuffle=False)  # the training dataset shuffles itself
