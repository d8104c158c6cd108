"""Models in one import: build -> compile -> train -> save / load -> predict.

The work is done in one module per stage; this module gathers their public names so notebooks,
the pipeline and the command line need a single ``from imgcls_utils import model_utils``:

- ``models``: the network for ``model.family`` (mlp, cnn, transfer)
- ``hardware``: distribution strategy, mixed precision, XLA
- ``training``: optimizer, schedule, loss, callbacks, the fit loop (resumable, two-phase)
- ``checkpoints``: the per-epoch state that makes a run resumable
- ``model_folders``: the ``.partial`` work folder, saving, loading with integrity checks
- ``prediction``: top-k labels for new image files
"""

from .hardware import Hardware, HardwareError, choose_hardware
from .model_folders import (ModelFolderError, find_unfinished_run, load_model_folder,
                            new_model_folder, run_config, save_model_folder,
                            unused_model_folder_name)
from .models import BACKBONES, ModelConfigError, build_model, count_parameters
from .prediction import image_files, predict_files
from .training import (TrainingDiverged, balanced_class_weights, compile_model, local_copy,
                       set_seed, train_model, training_callbacks, training_phases)

__all__ = [
    "BACKBONES", "Hardware", "HardwareError", "ModelConfigError", "ModelFolderError",
    "TrainingDiverged", "balanced_class_weights", "build_model", "choose_hardware",
    "compile_model", "count_parameters", "find_unfinished_run", "image_files",
    "load_model_folder", "local_copy", "new_model_folder", "predict_files", "run_config", "save_model_folder", "set_seed",
    "train_model", "training_callbacks", "training_phases", "unused_model_folder_name",
]
