"""Stage 3, evaluation: what a trained model gets right and wrong, and how sure it is.

``metrics`` (accuracy, per-class precision/recall/F1, confusion matrix, top losses),
``calibration`` (ECE and temperature scaling), ``interpret`` (Grad-CAM and saliency maps) and
``plots`` (one function per figure, each returning a matplotlib Figure).
"""

import importlib
import warnings


def __getattr__(name: str):
    """``imgcls_utils.evaluation`` was the metrics module: its functions keep working from here,
    with a FutureWarning naming their new module."""
    metrics = importlib.import_module(f"{__name__}.metrics")
    if name.startswith("_") or not hasattr(metrics, name):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(f"imgcls_utils.evaluation.{name} moved to imgcls_utils.evaluation.metrics."
                  f"{name}", FutureWarning, stacklevel=2)
    return getattr(metrics, name)
