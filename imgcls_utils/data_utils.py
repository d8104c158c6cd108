"""Data, in one import: source -> Raw_Data -> scan -> split -> Processed_Data -> tf.data.

Each stage has its own module; this one gathers the names that notebooks, the command line and
the benchmarks use, so they need a single ``from imgcls_utils import data_utils``:

- ``sources``: what ``data.source`` names becomes a folder of class folders
- ``scan`` (and ``duplicates``): every file used or skipped with a reason, copies grouped
- ``classes``: which class folders are trained, and why the others are not
- ``split``: the stratified, seeded train/val/test split that keeps copies together
- ``processed``: the split decoded once into shards in Processed_Data
- ``input_pipeline``: the shards as tf.data datasets, and the training augmentation
- ``images``: decoding any image file the same way everywhere
"""

from .classes import class_status, trainable_classes
from .errors import DataError
from .images import load_image
from .input_pipeline import build_augmentation, make_dataset, make_datasets, should_cache
from .processed import current_variant, prepare_data, processed_variants, remove_variants
from .scan import (class_counts, image_size_summary, load_samples, pixel_statistics,
                   scan_image_folder, scan_report, scan_source)
from .sources import resolve_source
from .split import SPLITS, groups_across_splits, split_sizes

__all__ = [
    "DataError", "SPLITS", "build_augmentation", "class_counts", "class_status", "current_variant",
    "groups_across_splits", "image_size_summary", "load_image", "load_samples", "make_dataset",
    "make_datasets", "pixel_statistics", "prepare_data", "processed_variants",
    "remove_variants", "resolve_source",
    "scan_image_folder", "scan_report", "scan_source", "should_cache", "split_sizes",
    "trainable_classes",
]
