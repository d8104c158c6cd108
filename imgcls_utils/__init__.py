"""imgcls: image classification with TensorFlow/Keras, from a folder of images to a served model.

The subpackages are the stages of the data flow, in order: ``data`` (source -> checked, split,
processed batches), ``training`` (-> a model folder), ``evaluation`` (metrics, calibration,
interpretation, figures), ``serving`` (export, prediction, the server, deployment) and
``experiments`` (notebook runs, sweeps, cross-validation). At the top: ``config`` (with
``config_rules``), ``errors``, ``files``, ``quiet_tensorflow``, the ``cli``, and the two modules
the notebooks import, ``data_utils`` and ``model_utils``.

Modules of earlier versions that moved into the stages still import from their old names, with
a FutureWarning naming the new one (``MOVED_MODULES``).
"""

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

MOVED_MODULES = {
    "imgcls_utils.runtime": "imgcls_utils.quiet_tensorflow",
    "imgcls_utils.sources": "imgcls_utils.data.sources",
    "imgcls_utils.images": "imgcls_utils.data.images",
    "imgcls_utils.scan": "imgcls_utils.data.scan",
    "imgcls_utils.classes": "imgcls_utils.data.trained_classes",
    "imgcls_utils.duplicates": "imgcls_utils.data.duplicates",
    "imgcls_utils.split": "imgcls_utils.data.split",
    "imgcls_utils.processed": "imgcls_utils.data.processed",
    "imgcls_utils.input_pipeline": "imgcls_utils.data.input_pipeline",
    "imgcls_utils.hardware": "imgcls_utils.training.hardware",
    "imgcls_utils.models": "imgcls_utils.training.models",
    "imgcls_utils.checkpoints": "imgcls_utils.training.checkpoints",
    "imgcls_utils.recipe": "imgcls_utils.training.recipe",
    "imgcls_utils.baselines": "imgcls_utils.training.baselines",
    "imgcls_utils.model_folders": "imgcls_utils.training.model_folders",
    "imgcls_utils.calibration": "imgcls_utils.evaluation.calibration",
    "imgcls_utils.interpret": "imgcls_utils.evaluation.interpret",
    "imgcls_utils.plots": "imgcls_utils.evaluation.plots",
    "imgcls_utils.export": "imgcls_utils.serving.export",
    "imgcls_utils.serving_graph": "imgcls_utils.serving.graph",
    "imgcls_utils.tflite": "imgcls_utils.serving.tflite",
    "imgcls_utils.prediction": "imgcls_utils.serving.prediction",
    "imgcls_utils.serving_api": "imgcls_utils.serving.rest_api",
    "imgcls_utils.deployment": "imgcls_utils.serving.deployment",
    "imgcls_utils.sweep": "imgcls_utils.experiments.sweep",
    "imgcls_utils.sweep_report": "imgcls_utils.experiments.sweep_report",
    "imgcls_utils.crossval": "imgcls_utils.experiments.crossval",
    "imgcls_utils.notebook_runs": "imgcls_utils.experiments.notebook_runs",
    "imgcls_utils.tables": "imgcls_utils.experiments.tables",
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports an old module name as the module it became, warning once per import."""

    def find_spec(self, name, path=None, target=None):
        return importlib.util.spec_from_loader(name, self) if name in MOVED_MODULES else None

    def create_module(self, spec):
        new = MOVED_MODULES[spec.name]
        warnings.warn(f"{spec.name} moved to {new}; import it from there", FutureWarning,
                      stacklevel=2)
        return importlib.import_module(new)

    def exec_module(self, module):
        """The module is the new one, already executed."""


sys.meta_path.append(_MovedModules())
