"""What every config key accepts: its type and allowed values, described in words (``RULES``),
the keys that moved (``MOVED``), the notebooks' named parameters, and the checks across keys.

The defaults are not here: they live only in ``config/Hyperparameters.yaml`` (a test keeps the
two in step, key for key).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Rule:
    """What a key accepts: a type check and an optional value check, each described in words.
    ``choices`` is the short list of spellings (``auto | true | false``) that the key's comment
    in the YAML file starts with (a test keeps the two equal)."""

    type_name: str
    is_type: Callable[[Any], bool]
    allowed: str = ""
    is_allowed: Callable[[Any], bool] = lambda value: True
    choices: str = ""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def integer(minimum: int, maximum: int | None = None) -> Rule:
    allowed = (f"an integer from {minimum} to {maximum}" if maximum is not None
               else f"an integer >= {minimum}")
    return Rule("integer", _is_int, allowed,
                lambda v: v >= minimum and (maximum is None or v <= maximum))


def fraction(low_open: bool = False, high_open: bool = True) -> Rule:
    """A number in [0, 1), or (0, 1) with ``low_open``: the range says which ends are allowed."""
    low, high = ("(" if low_open else "["), (")" if high_open else "]")
    return Rule("number", _is_number, f"a number in {low}0, 1{high}",
                lambda v: (v > 0 if low_open else v >= 0) and (v < 1 if high_open else v <= 1))


def positive_number() -> Rule:
    return Rule("number", _is_number, "a number > 0", lambda v: v > 0)


def boolean() -> Rule:
    return Rule("true/false", lambda v: isinstance(v, bool), "true or false")


def text(choices: str = "") -> Rule:
    return Rule("string", lambda v: isinstance(v, str) and v != "", "a non-empty string",
                choices=choices)


def choice(*options: Any) -> Rule:
    spelled = " | ".join(map(str, options))
    return Rule(type(options[0]).__name__, lambda v: type(v) is type(options[0]), spelled,
                lambda v: v in options, choices=spelled)


def auto_or_boolean() -> Rule:
    return Rule("auto/true/false", lambda v: v == "auto" or isinstance(v, bool),
                "auto, true or false", choices="auto | true | false")


def either(word: str, rule: Rule, short: str) -> Rule:
    """``word`` (``none`` or ``auto``) or a value ``rule`` accepts, ``short`` naming those."""
    return Rule(f"{word} or {rule.type_name}", lambda v: v == word or rule.is_type(v),
                f"{word} or {rule.allowed}", lambda v: v == word or rule.is_allowed(v),
                choices=f"{word} | {short}")


def int_list(length: int | None, minimum: int) -> Rule:
    count = f"{length} " if length else ""
    return Rule(f"list of {count}integers", lambda v: isinstance(v, list) and all(map(_is_int, v)),
                f"a list of {count}integers, each >= {minimum}",
                lambda v: (length is None or len(v) == length) and len(v) > 0
                and all(x >= minimum for x in v))


def folder_names(minimum: int = 2) -> Rule:
    """Distinct names that can each be a folder name (class names are class folders)."""
    return Rule("list of strings",
                lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
                f"a list of at least {minimum} distinct, non-empty names without '/' or '\\' "
                "that do not start with '.'",
                lambda v: len(v) >= minimum and len(set(v)) == len(v)
                and all(x and not x.startswith(".") and not {"/", "\\"} & set(x) for x in v))


def mapping() -> Rule:
    return Rule("mapping", lambda v: isinstance(v, dict), "a mapping of names to values",
                lambda v: all(isinstance(key, str) for key in v))


def identifier() -> Rule:
    return Rule("string", lambda v: isinstance(v, str), "letters, digits, '-' and '_' only",
                lambda v: v != "" and all(c.isalnum() or c in "-_" for c in v))


RULES: dict[str, Rule] = {
    "paths.raw_dir": text(),
    "paths.processed_dir": text(),
    "paths.models_dir": text(),
    "paths.runs_dir": text(),
    "paths.exports_dir": text(),
    "data.source": text(choices="digits | idx:<folder> | tfds:<name> | a folder of class folders"),
    "data.image_size": either("auto", int_list(2, minimum=8), "[height, width]"),
    "data.channels": either("auto", choice(1, 3), "1 | 3"),
    "data.train_fraction": fraction(low_open=True),
    "data.val_fraction": fraction(low_open=True),
    "data.test_fraction": fraction(low_open=True),
    "data.test_split": choice("fraction", "source"),
    "data.test_copies_in_train": choice("keep", "exclude"),
    "data.seed": integer(0),
    "data.class_names": either("auto", folder_names(), "a list of names"),
    "data.classes": either("all", folder_names(), "a list of class folders"),
    "data.exclude_classes": either("none", folder_names(minimum=1), "a list of class folders"),
    "data.min_images_per_class": integer(1),
    "data.untrainable_classes": choice("leave_out", "error"),
    "data.min_image_size": int_list(2, minimum=1),
    # Pillow refuses to open anything above twice its own warning threshold (178,956,970 pixels).
    "data.max_pixels": integer(1, maximum=178_956_970),
    # Further apart, the near-duplicate search compares most pairs of a large dataset, and
    # distinct pictures start to match.
    "data.near_duplicate_distance": either("none", integer(0, maximum=20),
                                           "an integer from 0 to 20"),
    "data.folds": either("none", integer(2), "an integer >= 2"),
    "data.cv_fold": either("none", integer(0), "an integer >= 0"),
    "data.cache": auto_or_boolean(),
    "data.cache_budget_mb": integer(0),
    "engine.runner": choice("auto", "local", "ray"),
    "engine.min_files": integer(0),
    "engine.workers": either("auto", integer(1), "an integer >= 1"),
    "engine.options": mapping(),
    "augment.enabled": boolean(),
    "augment.flip": choice("none", "horizontal", "vertical", "horizontal_and_vertical"),
    "augment.rotation": fraction(high_open=False),
    "augment.zoom": fraction(),
    "augment.translation": fraction(),
    "augment.contrast": fraction(),
    "model.name": either("auto", identifier(), "a name"),
    "model.family": choice("cnn", "mlp", "transfer"),
    "model.candidates": choice("network", "network_and_classical"),
    "model.conv_filters": int_list(None, minimum=1),
    "model.dense_units": integer(1),
    "model.dropout": fraction(),
    "model.batch_norm": boolean(),
    "model.batch_norm_momentum": fraction(low_open=True),
    "model.residual": boolean(),
    "model.pooling": choice("average", "flatten"),
    "model.l2": fraction(),
    # The keys of imgcls_utils.training.models.BACKBONES (a test keeps them equal).
    "transfer.backbone": choice("mobilenet_v2", "efficientnet_b0", "resnet50", "inception_v3",
                                "vgg16"),
    "transfer.weights": text(choices="imagenet | none | a weights file"),
    "transfer.alpha": positive_number(),
    "transfer.input_size": either("auto", integer(32), "an integer >= 32"),
    "transfer.fine_tune_layers": integer(0),
    "transfer.fine_tune_epochs": integer(0),
    "transfer.fine_tune_learning_rate": positive_number(),
    "train.epochs": integer(1),
    "train.batch_size": integer(1),
    "train.min_steps_per_epoch": integer(1),
    "train.learning_rate": positive_number(),
    "train.optimizer": choice("adam", "adamw", "sgd"),
    "train.momentum": fraction(),
    "train.weight_decay": fraction(),
    "train.lr_schedule": choice("constant", "cosine", "step", "reduce_on_plateau"),
    "train.warmup_epochs": integer(0),
    "train.step_decay_epochs": integer(1),
    "train.step_decay_factor": fraction(low_open=True),
    "train.reduce_lr_factor": fraction(low_open=True),
    "train.reduce_lr_patience": integer(0),
    "train.early_stopping_patience": integer(0),
    "train.label_smoothing": fraction(),
    "train.class_weight": choice("none", "balanced"),
    "train.verbose": integer(0, 2),
    "train.classical_baselines": boolean(),
    "train.calibration": choice("temperature", "none"),
    "hardware.strategy": choice("auto", "cpu", "gpu", "mirrored", "multi_worker"),
    "hardware.mixed_precision": choice("auto", "float32", "mixed_float16", "mixed_bfloat16"),
    "hardware.jit_compile": auto_or_boolean(),
    "hardware.steps_per_execution": integer(1),
    "hardware.deterministic": auto_or_boolean(),
    "serve.host": text(),
    "serve.port": integer(0, maximum=65535),
    "serve.grpc_port": integer(0, maximum=65535),
    "serve.max_batch_size": integer(1),
    "serve.batch_timeout_ms": integer(0, maximum=1000),
    "serve.max_queued_images": integer(1),
    "serve.max_request_mb": positive_number(),
    "serve.poll_seconds": positive_number(),
    "serve.top_k": integer(1),
    "serve.api_key_variable": identifier(),
    "serve.drift_window": integer(10, maximum=1_000_000),
}

# Keys of earlier versions, and where they live now: an old name fails with the new one.
MOVED = {
    "train.strategy": "hardware.strategy",
    "train.mixed_precision": "hardware.mixed_precision",
    "train.jit_compile": "hardware.jit_compile",
    "train.steps_per_execution": "hardware.steps_per_execution",
    "train.deterministic": "hardware.deterministic",
    "model.backbone": "transfer.backbone",
    "model.weights": "transfer.weights",
    "model.backbone_alpha": "transfer.alpha",
    "model.backbone_input_size": "transfer.input_size",
    "model.fine_tune_layers": "transfer.fine_tune_layers",
    "train.fine_tune_epochs": "transfer.fine_tune_epochs",
    "train.fine_tune_learning_rate": "transfer.fine_tune_learning_rate",
}

# The named parameters a notebook's ``parameters`` cell may declare, and the key each sets.
NOTEBOOK_PARAMETERS = {
    "source": "data.source",
    "image_size": "data.image_size",
    "seed": "data.seed",
    "cv_fold": "data.cv_fold",
    "model_family": "model.family",
    "epochs": "train.epochs",
    "batch_size": "train.batch_size",
    "learning_rate": "train.learning_rate",
}


def cross_field_problems(values: Mapping[str, Any]) -> list[str]:
    """Checks that involve several keys; run only when every key is individually valid."""
    fractions = [values[f"data.{part}_fraction"] for part in ("train", "val", "test")]
    if abs(sum(fractions) - 1.0) > 1e-6:
        return [f"data.train_fraction + data.val_fraction + data.test_fraction = "
                f"{' + '.join(map(str, fractions))} = {sum(fractions):g}; they must sum to 1"]
    return _cross_validation_problems(values["data.folds"], values["data.cv_fold"])


def _cross_validation_problems(folds, cv_fold) -> list[str]:
    if cv_fold == "none":
        return []
    if folds == "none":
        return [f"data.cv_fold = {cv_fold} needs data.folds (the number of folds) set too"]
    if cv_fold >= folds:
        return [f"data.cv_fold = {cv_fold}: with data.folds = {folds} the folds are 0 to "
                f"{folds - 1}"]
    return []
