"""The resumable state of a training run, saved after every epoch in its ``.resumable`` folder.

``<run>.resumable/checkpoints/state.json`` says which epochs are done (the whole history), which
weights file holds the latest epoch (model and optimizer, so Adam's moments and the step count
continue) and which the best one (lowest validation loss), and the counters of early stopping
and reduce-on-plateau, so a resumed run stops at the same epoch as an uninterrupted one, and
what the run started with (data fingerprint, config, TensorFlow and Keras major versions), so
it is never continued on other data, another config, or weights files of another version.

Writes are ordered so that a ``kill -9`` at any moment leaves a consistent state: weights go to
new, epoch-numbered files first, then ``state.json`` is replaced atomically to point at them,
then unreferenced files are deleted. ``history.csv`` is rewritten from the state each epoch, so
it holds every finished epoch exactly once, also after a resume.

Not restored: the position in the shuffled data stream (a resumed epoch sees its own shuffle
order) and TensorBoard's event files (a resumed run adds new ones next to the old).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import UserError
from ..files import write_atomically
from ..quiet_tensorflow import keras, tf
from .model_folders import CHECKPOINT_DIR, HISTORY_FILE

STATE_FILE = "state.json"
MONITOR = "val_loss"
# What early stopping and reduce-on-plateau count with; restored after their on_train_begin.
CALLBACK_COUNTERS = ("wait", "best", "best_epoch", "cooldown_counter")


_CHANGED = {
    "data": "the data changed since it started (its fingerprint differs)",
    "config": "its config.yaml was edited since it started",
    "tensorflow": "it started with TensorFlow {then}.x and this is TensorFlow {now}.x",
    "keras": "it started with Keras {then}.x and this is Keras {now}.x",
}


def run_identity(data_fingerprint: str, config_yaml: str) -> dict[str, str]:
    """What must not change while a run is interrupted: its data, its config, and the major
    versions of TensorFlow and Keras, whose weight files the checkpoints are."""
    return {"data": data_fingerprint, "config": hashlib.sha256(config_yaml.encode()).hexdigest(),
            "tensorflow": tf.__version__.split(".")[0], "keras": keras.__version__.split(".")[0]}


class RunState:
    """The state of one run: history rows, per-phase progress and the best epoch."""

    def __init__(self, run_folder: Path, values: dict):
        self.run_folder = Path(run_folder)
        self.values = values

    @classmethod
    def load(cls, run_folder: Path) -> RunState:
        """The state saved in ``run_folder`` by an earlier, interrupted attempt, or a new one."""
        path = Path(run_folder) / CHECKPOINT_DIR / STATE_FILE
        values = (json.loads(path.read_text()) if path.is_file()
                  else {"history": [], "phases": {}, "best": None})
        state = cls(run_folder, values)
        state.folder.mkdir(parents=True, exist_ok=True)
        return state

    @property
    def folder(self) -> Path:
        return self.run_folder / CHECKPOINT_DIR

    def check_unchanged(self, identity: dict[str, str]) -> None:
        """Remember what a run starts with (``run_identity``); refuse to continue it when any
        of it differs, naming what."""
        recorded = self.values.setdefault("identity", identity)
        changed = [_CHANGED[key].format(then=recorded.get(key), now=value)
                   for key, value in identity.items() if recorded.get(key) != value]
        if changed:
            raise UserError(f"{self.run_folder} cannot be resumed: {'; '.join(changed)}; "
                            "start a new run")

    def history(self) -> pd.DataFrame:
        """One row per finished epoch: ``epoch`` (from 1), ``phase``, the metrics, the rate."""
        return pd.DataFrame(self.values["history"])

    def epochs_done(self) -> int:
        return len(self.values["history"])

    def phase(self, name: str) -> dict:
        """The progress of one phase, created when the phase starts."""
        return self.values["phases"].setdefault(
            name, {"first_epoch": self.epochs_done(), "latest": None, "finished": False,
                   "callbacks": {}})

    def finished(self, name: str) -> bool:
        return self.values["phases"].get(name, {}).get("finished", False)

    def restore_weights(self, model: keras.Model, name: str) -> None:
        """Load the phase's best weights if it finished, else its latest full state if any."""
        phase = self.values["phases"].get(name)
        if phase and phase["finished"]:
            self.load_best(model)
        elif phase and phase["latest"]:
            model.load_weights(self.folder / phase["latest"])

    def load_best(self, model: keras.Model) -> None:
        with np.load(self.folder / self.values["best"]["file"]) as saved:
            model.set_weights([saved[f"arr_{i}"] for i in range(len(saved.files))])

    def record_epoch(self, model: keras.Model, name: str, row: dict, finished: bool) -> None:
        """Save the model and optimizer after an epoch, and the weights if it is the best yet."""
        epoch, phase = row["epoch"], self.phase(name)
        phase["latest"] = f"{name}-{epoch:04d}.weights.h5"
        model.save_weights(self.folder / phase["latest"])
        best = self.values["best"]
        if best is None or row[MONITOR] < best[MONITOR]:
            self.values["best"] = {"epoch": epoch, MONITOR: row[MONITOR],
                                   "file": f"best-{epoch:04d}.npz"}
            np.savez(self.folder / self.values["best"]["file"], *model.get_weights())
        phase["finished"] = finished
        self.values["history"].append(row)

    def save(self) -> None:
        """Point ``state.json`` at the new files atomically, rewrite the history, tidy up."""
        write_atomically(self.folder / STATE_FILE, json.dumps(self.values, indent=1))
        write_atomically(self.run_folder / HISTORY_FILE, self.history().to_csv(index=False))
        keep = self._referenced_files()
        for path in [*self.folder.glob("*.weights.h5"), *self.folder.glob("*.npz")]:
            if path.name not in keep:
                path.unlink()

    def _referenced_files(self) -> set[str]:
        files = {phase["latest"] for phase in self.values["phases"].values() if phase["latest"]}
        return files | ({self.values["best"]["file"]} if self.values["best"] else set())


class RunCheckpoint(keras.callbacks.Callback):
    """Keeps a ``RunState`` up to date during one phase's ``fit``; put it after ``watched`` (the
    callbacks whose counters it saves and restores). At the end the model gets the weights of
    the best epoch of the whole run, as ``EarlyStopping(restore_best_weights=True)`` would."""

    def __init__(self, state: RunState, phase: str, watched: list):
        super().__init__()
        self.state, self.phase_name, self.watched = state, phase, watched

    def on_train_begin(self, logs=None):
        saved = self.state.phase(self.phase_name)["callbacks"]
        for callback in self.watched:
            for key, value in saved.get(type(callback).__name__, {}).items():
                setattr(callback, key, value)

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch + 1, "phase": self.phase_name,
               **{key: float(value) for key, value in (logs or {}).items()},
               "learning_rate": float(keras.ops.convert_to_numpy(
                   self.model.optimizer.learning_rate))}
        finished = self.model.stop_training or epoch + 1 >= self.params["epochs"]
        self.state.phase(self.phase_name)["callbacks"] = {
            type(callback).__name__: {key: _plain(getattr(callback, key))
                                      for key in CALLBACK_COUNTERS if hasattr(callback, key)}
            for callback in self.watched}
        self.state.record_epoch(self.model, self.phase_name, row, finished)
        self.state.save()

    def on_train_end(self, logs=None):
        self.state.phase(self.phase_name)["finished"] = True
        self.state.save()
        if self.state.values["best"]:
            self.state.load_best(self.model)


def _plain(value):
    """A JSON-ready copy of a callback counter (they are Python or NumPy numbers, or None)."""
    return value.item() if isinstance(value, np.generic) else value
