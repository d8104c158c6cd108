"""Models, in one import: the training recipe, and the pieces it is made of.

Each stage has its own module; this one gathers the names that notebooks, the command line and
the benchmarks use, so they need a single ``from imgcls_utils import model_utils``:

- ``recipe``: ``TrainingRun``, the named steps from hardware choice to a saved model folder
- ``hardware``: distribution strategy, mixed precision, XLA
- ``models``: the network for ``model.family`` (mlp, cnn, transfer)
- ``training``: optimizer, schedule, loss, callbacks, the resumable fit loop
- ``checkpoints``: the per-epoch state that makes a run resumable
- ``model_folders``: the ``.resumable`` run folder, saving, loading with integrity checks
- ``prediction``: top-k labels for new image files
- ``export``: the model for TensorFlow Serving and TensorFlow Lite
"""

from .export import export_model
from .hardware import HardwareError, choose_hardware
from .model_folders import (ModelFolderError, find_unfinished_run, left_out_classes,
                            load_model_folder, new_run_folder, run_config, saved_files,
                            unused_model_folder_name)
from .models import ModelConfigError, build_model, count_parameters
from .prediction import predict_files
from .recipe import TrainingRun, train
from .training import TrainingDiverged, compile_model, set_seed, train_model

__all__ = [
    "HardwareError", "ModelConfigError", "ModelFolderError", "TrainingDiverged", "TrainingRun",
    "build_model", "choose_hardware", "compile_model", "count_parameters", "export_model",
    "find_unfinished_run",
    "left_out_classes", "load_model_folder", "new_run_folder", "predict_files", "run_config", "saved_files",
    "set_seed", "train", "train_model", "unused_model_folder_name",
]
