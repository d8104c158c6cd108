"""Progress lines: one per training epoch (``imgcls train``, the Model_Training notebook, and
echoed by ``imgcls run`` from the notebook's output), and the duration format every progress
line of imgcls uses. No TensorFlow here: sweeps import it before anything heavy."""

from __future__ import annotations

import re

EPOCH_LINE = re.compile(r"^epoch \d+/\d+ ")
SHOWN_LOGS = ("loss", "accuracy", "val_loss", "val_accuracy")


def duration(seconds: float) -> str:
    """``2m05s`` or ``45s``: elapsed time and ETA in progress lines."""
    minutes, seconds = divmod(int(round(seconds)), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def epoch_line(epoch: int, epochs: int, phase: str, logs: dict, elapsed: float,
               remaining: float) -> str:
    """``epoch 3/40 (train): loss 0.2345, accuracy 0.9512, val_loss 0.1234, val_accuracy
    0.9700; 12s elapsed, at most 2m30s left`` (early stopping may end the run sooner)."""
    scores = ", ".join(f"{name} {logs[name]:.4f}" for name in SHOWN_LOGS if name in logs)
    return (f"epoch {epoch}/{epochs} ({phase}): {scores}; {duration(elapsed)} elapsed, at most "
            f"{duration(remaining)} left")
