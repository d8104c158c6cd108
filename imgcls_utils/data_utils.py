"""Data, in one import: source -> Raw_Data -> scan -> split -> Processed_Data -> tf.data.

The names the data notebooks, the command line and users call, gathered from the ``data/``
stage (and its figures from ``evaluation.plots``), so they need a single
``from imgcls_utils import data_utils``. Each lives in its stage's module (see ``data``).
"""

import warnings

from .data.images import load_image
from .data.input_pipeline import build_augmentation, make_dataset, make_datasets, should_cache
from .data.processed import current_variant, process_data, processed_variants, remove_variants
from .data.scan import scan_image_folder, scan_source
from .data.scan_report import (class_counts, image_size_summary, load_samples, pixel_statistics,
                               scan_report)
from .data.sources import resolve_source
from .data.split import SPLITS, groups_across_splits, split_sizes
from .data.trained_classes import class_status, trainable_classes
from .errors import DataError
from .evaluation.plots import (plot_augmentation_preview, plot_class_counts, plot_duplicate_groups,
                               plot_image_grid)

__all__ = [
    "DataError", "SPLITS", "build_augmentation", "class_counts", "class_status", "current_variant",
    "groups_across_splits", "image_size_summary", "load_image", "load_samples", "make_dataset",
    "make_datasets", "pixel_statistics", "plot_augmentation_preview", "plot_class_counts",
    "plot_duplicate_groups", "plot_image_grid", "process_data", "processed_variants",
    "remove_variants", "resolve_source", "scan_image_folder", "scan_report", "scan_source",
    "should_cache", "split_sizes", "trainable_classes",
]

# Names of earlier versions (notebooks written for them keep working, with a warning).
RENAMED = {"prepare_data": "process_data"}


def __getattr__(name: str):
    if name in RENAMED:
        warnings.warn(f"data_utils.{name} is now data_utils.{RENAMED[name]}", FutureWarning,
                      stacklevel=2)
        return globals()[RENAMED[name]]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
