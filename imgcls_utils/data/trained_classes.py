"""Which class folders are trained: those the config selects (``data.classes``,
``data.exclude_classes``) that have at least ``data.min_images_per_class`` usable images.

Real folders have classes that cannot be trained: an empty folder, one whose files are all
unreadable, one whose only images are copies of images filed under another class. The scan
report names each with its reason; training leaves them out of the label set with a warning
(``data.untrainable_classes: leave_out``) or refuses (``error``), and the left-out classes are
recorded with the processed data and the model, so a prediction never silently lacks a class.
"""

from __future__ import annotations

import pandas as pd

from ..config import Section
from ..errors import DataError, warn
from .duplicates import CONFLICT
from .scan import ScanResult
from .sources import part_and_class


def class_status(scan: ScanResult, data: Section) -> pd.DataFrame:
    """One row per class folder, by name: its usable images, the files skipped in it, whether
    the config chose it, and why it is not trained (empty when it is)."""
    usable = scan.images["label"].value_counts()
    skipped = scan.skipped.assign(label=[part_and_class(path, scan.official_split)[1]
                                         for path in scan.skipped["path"]])
    rows = []
    for name in scan.class_folders:
        problems = skipped.loc[skipped["label"] == name, "problem"]
        count = int(usable.get(name, 0))
        chosen = _chosen(name, data)
        reason = _unchosen_reason(name, data) if not chosen else _reason(count, problems, data)
        rows.append({"class": name, "usable": count, "skipped": len(problems), "chosen": chosen,
                     "reason": reason})
    return pd.DataFrame(rows, columns=["class", "usable", "skipped", "chosen", "reason"])


def _chosen(name: str, data: Section) -> bool:
    return ((data.classes == "all" or name in data.classes)
            and (data.exclude_classes == "none" or name not in data.exclude_classes))


def _unchosen_reason(name: str, data: Section) -> str:
    if data.classes != "all" and name not in data.classes:
        return "not in data.classes"
    return "in data.exclude_classes"


def _reason(usable: int, problems: pd.Series, data: Section) -> str:
    if usable >= data.min_images_per_class:
        return ""
    if usable == 0 and problems.empty:
        return "empty folder"
    if usable == 0 and (problems == CONFLICT).all():
        return (f"all {len(problems)} file(s) excluded as copies of images filed under "
                "another class")
    if usable == 0:
        return f"none of its {len(problems)} file(s) is a usable image (see skipped files)"
    return (f"only {usable} usable image(s); data.min_images_per_class is "
            f"{data.min_images_per_class}")


def untrainable(status: pd.DataFrame) -> dict[str, str]:
    """``class -> reason`` for the chosen classes that cannot be trained."""
    rows = status[status["chosen"] & (status["reason"] != "")]
    return dict(zip(rows["class"], rows["reason"]))


def trainable_classes(scan: ScanResult, data: Section) -> tuple[list[str], dict[str, str]]:
    """The classes to train on and ``class -> reason`` for every class folder left out. A
    DataError when data.classes or data.exclude_classes names no class folder, when fewer than
    2 classes remain, or, with ``data.untrainable_classes: error``, when any cannot be trained."""
    _check_names(scan, data)
    status = class_status(scan, data)
    problems = untrainable(status)
    if problems and data.untrainable_classes == "error":
        raise DataError(f"{scan.folder}: class(es) that cannot be trained: {_listed(problems)}; "
                        "set data.untrainable_classes to leave_out to train without them, or "
                        "leave them out with data.exclude_classes")
    trained = status.loc[status["reason"] == "", "class"].tolist()
    if len(trained) < 2:
        raise DataError(f"{scan.folder}: {len(trained)} class(es) can be trained "
                        f"({', '.join(trained) or 'none'}); classification needs at least 2"
                        + (f"; not trainable: {_listed(problems)}" if problems else ""))
    if problems:
        warn(f"left out of training, as data.untrainable_classes is leave_out: "
             f"{_listed(problems)}")
    left_out = status[status["reason"] != ""]
    return trained, dict(zip(left_out["class"], left_out["reason"]))


def _check_names(scan: ScanResult, data: Section) -> None:
    for key in ("classes", "exclude_classes"):
        named = data[key] if isinstance(data[key], list) else []
        unknown = sorted(set(named) - set(scan.class_folders))
        if unknown:
            raise DataError(f"data.{key} names {', '.join(unknown)}, but {scan.folder} has no "
                            f"such class folder (it has: {', '.join(scan.class_folders)})")


def _listed(reasons: dict[str, str]) -> str:
    return "; ".join(f"{name} ({reason})" for name, reason in reasons.items())
