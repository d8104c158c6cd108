"""TensorFlow and Keras, imported once and quietly.

Importing TensorFlow 2.21 writes absl log lines straight to file descriptor 2 (``oneDNN custom
operations are on``, ``Could not find cuda drivers``, ``failed call to cuInit``...), and no
environment variable silences them. In a notebook ipykernel turns them into cell output: noise
for users and a moving target for nbval. So the import and the device discovery run with fd 2
redirected to a temporary file; afterwards every captured line that is not one of the known
start-up notices is written back to stderr, so real errors stay visible.

After start-up, ``TF_CPP_MIN_LOG_LEVEL`` does work: it defaults to 1 here, which drops C++ INFO
lines (e.g. one per TFRecordDataset) and keeps warnings and errors. A value the user set wins.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import warnings
from contextlib import contextmanager

STARTUP_NOTICES = re.compile("|".join([
    r"All log messages before absl::InitializeLog\(\) is called",
    r"oneDNN custom operations are on",
    r"Could not find cuda drivers on your machine",
    r"This TensorFlow binary is optimized to use available CPU instructions",
    r"To enable the following instructions: .* rebuild TensorFlow",
    r"failed call to cuInit",
    r"Unable to register cu(DNN|FFT|BLAS) factory",
    r"computation_placer\.cc.*already registered",
    r"TF-TRT Warning: Could not find TensorRT",
]))


# What the TensorFlow Lite converter and the LiteRT interpreter always print (fd 2): the converter
# ignoring options the Python API sets, its quantization summary, XNNPACK taking over on CPU.
TFLITE_NOTICES = re.compile("|".join([
    r"tf_tfl_flatbuffer_helpers\.cc.*Ignored (output_format|drop_control_dependency)",
    r"flatbuffer_export\.cc.*Skipping runtime version metadata",
    r"^fully_quantize: \d+, inference_type",
    r"Created TensorFlow Lite XNNPACK delegate for CPU",
]))


@contextmanager
def without_tflite_notices():
    """Run TensorFlow Lite conversions and interpreters without their routine notices."""
    with _stderr_filtered(TFLITE_NOTICES), warnings.catch_warnings():
        # int8 with uint8 pixels in: the input range comes from the calibration images
        warnings.filterwarnings("ignore", "Statistics for quantized inputs were expected")
        yield


@contextmanager
def tensorflow_logs_above_warnings():
    """Keep TensorFlow's Python logger to errors while the block runs: saving a SavedModel logs
    ``Assets written to`` at INFO, and measuring a model on batches of two sizes (the last one
    smaller) warns about retracing, both routine in an export."""
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel("ERROR")
    try:
        yield
    finally:
        logger.setLevel(level)


@contextmanager
def _stderr_filtered(notices: re.Pattern = STARTUP_NOTICES):
    """Capture fd 2 while the block runs, then re-emit the lines that are not ``notices``."""
    sys.stderr.flush()
    saved_fd = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved_fd, 2)
            os.close(saved_fd)
            captured.seek(0)
            kept = [line for line in captured.read().decode(errors="replace").splitlines()
                    if line.strip() and not notices.search(line)]
            if kept:
                print("\n".join(kept), file=sys.stderr)


os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
with _stderr_filtered():
    import keras
    import tensorflow as tf

    tf.config.list_physical_devices()

__all__ = ["tf", "keras", "tensorflow_logs_above_warnings", "without_tflite_notices"]
