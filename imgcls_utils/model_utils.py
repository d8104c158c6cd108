"""Models, in one import: train, evaluate, look inside, save, predict, export.

The names the Model_Training notebook, the command line and users call, gathered from the
``training/``, ``evaluation/`` and ``serving/`` stages, so they need a single
``from imgcls_utils import model_utils``. ``TrainingRun`` is the recipe one step per cell;
each name lives in its stage's module (see those subpackages).
"""

from .evaluation.calibration import reliability_bins
from .evaluation.interpret import explain_examples
from .evaluation.metrics import correct_examples, most_confused, per_class_report, top_losses
from .evaluation.plots import (plot_confusion_matrix, plot_drift_reference, plot_explanations,
                               plot_reliability_diagram, plot_top_losses, plot_training_curves)
from .serving.export import export_model
from .serving.prediction import predict_files
from .training.baselines import comparison_table
from .training.hardware import HardwareError, choose_hardware
from .training.loop import TrainingDiverged, compile_model, set_seed, train_model
from .training.model_folders import (ModelFolderError, find_unfinished_run, left_out_classes,
                                     load_model_folder, new_run_folder, run_config, saved_files,
                                     unused_model_folder_name)
from .training.models import ModelConfigError, build_model, count_parameters
from .training.recipe import TrainingRun, train

__all__ = [
    "HardwareError", "ModelConfigError", "ModelFolderError", "TrainingDiverged", "TrainingRun",
    "build_model", "choose_hardware", "comparison_table", "compile_model", "correct_examples",
    "count_parameters", "explain_examples", "export_model", "find_unfinished_run",
    "left_out_classes", "load_model_folder", "most_confused", "new_run_folder",
    "per_class_report", "plot_confusion_matrix", "plot_drift_reference", "plot_explanations",
    "plot_reliability_diagram",
    "plot_top_losses", "plot_training_curves", "predict_files", "reliability_bins", "run_config",
    "saved_files", "set_seed", "top_losses", "train", "train_model", "unused_model_folder_name",
]
