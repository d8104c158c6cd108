"""The ``imgcls`` command: ``imgcls run|train|cv|predict|explain|export|serve|deploy ...``.

The config is loaded and validated before anything heavy is imported, so a mistake in it is
reported within a second, as one message, without a traceback.
"""

from __future__ import annotations

import argparse
import errno
import json
import sys
from datetime import datetime
from pathlib import Path

from importlib.metadata import version

from .config import (CONFIG_RELATIVE_PATH, CONFIG_VARIABLE, Config, default_config_path,
                     find_project_root, load_config, parse_set_option)
from .deployment import DEPLOYMENT_RELATIVE_PATH, load_deployment, write_deployment
from .errors import UserError, warn

NOTEBOOKS = ("Data_Exploration", "Data_Preprocessing", "Model_Training")
USER_ERROR = 2  # exit code: a bad config, data or model folder, told in one line
PREDICTION_FAILED = 3  # exit code: imgcls predict classified some files, not all
DESCRIPTION = ("imgcls: image classification with TensorFlow/Keras. Run the three notebooks "
               "with papermill, or each step on its own.")


def _config_from_args(args) -> Config:
    return load_config(args.config, set_options=args.set)


def cmd_config(args) -> int:
    print(_config_from_args(args).to_yaml(), end="")
    return 0


def cmd_scan(args) -> int:
    from . import data_utils

    cfg = _config_from_args(args)
    scan = data_utils.scan_source(cfg)
    print(data_utils.scan_report(scan, cfg.data), flush=True)
    data_utils.trainable_classes(scan, cfg.data)  # nothing to train on: a one-line error
    return 0


def cmd_prepare(args) -> int:
    from . import data_utils

    prepared = data_utils.prepare_data(_config_from_args(args))
    state = "reused (inputs unchanged)" if prepared.reused else "built"
    print(f"processed data {state}: {prepared.folder}")
    print(data_utils.split_sizes(prepared.images).to_string())
    return 0


def cmd_processed(args) -> int:
    from . import data_utils

    cfg = _config_from_args(args)
    processed_dir = cfg.path("processed_dir")
    if args.clean:
        for name in data_utils.remove_variants(processed_dir, data_utils.current_variant(cfg)):
            print(f"removed {processed_dir / name}")
    variants = data_utils.processed_variants(processed_dir)
    if variants.empty:
        print(f"no processed data in {processed_dir}")
    else:
        print(variants.to_string(index=False))
    return 0


def cmd_train(args) -> int:
    cfg, run_folder = _resumed_run(args) if args.resume else (_config_from_args(args), None)
    from .model_utils import train

    run = train(cfg, resume=run_folder)
    if not run.hardware.is_chief:
        print("training done; the chief worker evaluates and saves the model folder")
        return 0
    from .baselines import comparison_line

    print(f"test accuracy: {run.evaluation.metrics['test_accuracy']:.4f}")
    print(f"model folder: {run.model_folder}")
    print(comparison_line(run.evaluation.metrics))
    return 0


def cmd_cv(args) -> int:
    """k-fold cross-validation: every fold's config validated, then one model per fold."""
    from .crossval import cross_validate, fold_configs

    configs = fold_configs(args.config, args.set or [], args.folds)
    folder = configs[0].path("runs_dir") / f"cv_{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    result = cross_validate(configs, folder)
    print(f"\n{result.report()}")
    print(f"cross-validation folder: {folder} (cv_report.md, cv_folds.csv, cv_folds.png, "
          "fold_<i>/ model folders)")
    return 0


def _resumed_run(args) -> tuple[Config, Path]:
    """The config and ``.resumable`` folder of the run named by ``--resume``."""
    if args.set:
        raise UserError("--resume continues a run with the config it started with; "
                        "drop the --set options (or start a new run without --resume)")
    from .model_utils import find_unfinished_run, run_config

    project = _config_from_args(args)
    run_folder = find_unfinished_run(args.resume, project.path("models_dir"))
    return run_config(run_folder, project.root), run_folder


def cmd_predict(args) -> int:
    predictions = _predictions(args.model, args.images, args.top_k)
    for prediction in predictions:
        print(f"{prediction.path}: {_guesses(prediction)}")
    return _exit_code(predictions)


def cmd_explain(args) -> int:
    """Top-k labels as predict gives them, and a heat map overlay PNG per image."""
    from .interpret import explain_files

    explanations = explain_files(args.model_folder, args.images, args.out, args.top_k)
    _note_left_out_classes(args.model_folder)
    for explanation in explanations:
        written = f" -> {explanation.overlay}" if explanation.overlay else ""
        print(f"{explanation.prediction.path}: {_guesses(explanation.prediction)}{written}")
    return _exit_code([explanation.prediction for explanation in explanations])


def _guesses(prediction) -> str:
    """``label probability, ...``, or why the file cannot be classified."""
    guesses = ", ".join(f"{label} {probability:.3f}" for label, probability in prediction.top)
    return guesses or f"cannot be classified: {prediction.error}"


def _exit_code(predictions: list) -> int:
    """0, or PREDICTION_FAILED after saying on stderr how many files could not be classified."""
    failed = sum(bool(prediction.error) for prediction in predictions)
    if failed:
        print(f"imgcls: {failed} of {len(predictions)} file(s) could not be classified",
              file=sys.stderr)
    return PREDICTION_FAILED if failed else 0


def _predictions(model: Path, images: list[Path], top_k: int) -> list:
    """Top-k labels of the images by a model folder, an export or a ``.tflite`` file."""
    from . import export
    from .model_utils import predict_files
    from .prediction import predict_files_with_export

    if model.suffix == ".tflite":
        from .tflite import load_tflite

        return predict_files(*load_tflite(model), images, top_k)
    if export.is_export(model):
        return predict_files_with_export(export.find_version(model), images, top_k)
    from .model_utils import load_model_folder

    loaded = load_model_folder(model)
    _note_left_out_classes(model)
    return predict_files(*loaded, images, top_k)


def _note_left_out_classes(model_folder: Path) -> None:
    from .model_utils import left_out_classes

    for name, reason in left_out_classes(model_folder).items():
        print(f"note: the model was trained without class {name} ({reason}); it never "
              "predicts it", file=sys.stderr)


def cmd_export(args) -> int:
    from .model_utils import export_model

    project = _config_from_args(args)
    prepared = None
    if not args.no_tflite:
        from .data_utils import prepare_data

        prepared = prepare_data(_model_data_config(args))
    exported = export_model(args.model_folder, project.path("exports_dir"), prepared)
    print(f"exported {exported.name} version {exported.version}: {exported.folder}")
    if exported.report:
        parity = exported.report["parity"]
        print(f"graph vs imgcls predict on {parity['images']} test images: top-1 agreement "
              f"{parity['top1_agreement']:.4f}, largest probability difference "
              f"{parity['max_probability_difference']:.2g}, largest pixel difference "
              f"{parity['max_pixel_difference']:.0f}")
        print(exported.tflite_table().to_string())
    return 0


def _model_data_config(args) -> Config:
    """This project's config with the data settings a model folder was trained with: where its
    processed data is (rebuilt if it was deleted), in this project."""
    from .model_folders import trained_config

    trained = trained_config(args.model_folder)
    data = {f"data.{key}": value for key, value in trained["data"].items()}
    return load_config(args.config, overrides=data, set_options=args.set)


def cmd_serve(args) -> int:
    """Serve an export (or a model folder, exported first) until interrupted."""
    import os

    overrides = dict(parse_set_option(option) for option in args.set or [])
    flags = {"serve.host": args.host, "serve.port": args.port,
             "serve.max_batch_size": 1 if args.no_batching else None}
    overrides.update({key: value for key, value in flags.items() if value is not None})
    cfg = load_config(args.config, overrides=overrides)
    # TensorFlow's C++ warnings (one per undecodable upload) would break the JSON log lines.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from .server import ServeSettings, serve

    serve(args.target, ServeSettings.from_config(cfg))
    return 0


def cmd_deploy(args) -> int:
    """Validate the deployment settings and render compose.yaml and nginx.conf next to them."""
    settings = load_deployment(args.settings or find_project_root() / DEPLOYMENT_RELATIVE_PATH)
    for path in write_deployment(settings):
        print(f"wrote {path}")
    export = (settings.folder / settings.exports_dir / settings.model).resolve()
    if not export.is_dir():
        warn(f"{export} does not exist yet: the replicas serve it, so export the model "
             "(imgcls export) before starting them")
    return 0


def cmd_run(args) -> int:
    """Execute the three notebooks in order with papermill, then report where everything is."""
    import papermill

    from .model_utils import unused_model_folder_name

    cfg = _config_from_args(args)
    notebooks = cfg.root / "notebooks"
    if not all((notebooks / f"{name}.ipynb").is_file() for name in NOTEBOOKS):
        raise UserError(f"imgcls run executes the notebooks in {notebooks}, and they are not all "
                        f"there ({', '.join(NOTEBOOKS)}); run it in the imgcls project")
    overrides = dict(parse_set_option(option) for option in args.set or [])
    run_dir = cfg.path("runs_dir") / datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg.save(run_dir / "config.yaml")
    model_dir = unused_model_folder_name(cfg)
    # The notebooks load the very file this run validated, wherever their kernels start.
    config_path = str(Path(args.config).resolve() if args.config else default_config_path())
    for number, name in enumerate(NOTEBOOKS, start=1):
        parameters = {"config_path": config_path, "overrides": overrides}
        if name == "Model_Training":
            parameters["model_dir"] = str(model_dir)
        output = run_dir / f"{number}_{name}.ipynb"
        print(f"running {name} -> {output}", flush=True)
        try:
            papermill.execute_notebook(notebooks / f"{name}.ipynb", output,
                                       parameters=parameters, kernel_name=_kernel_name(),
                                       cwd=str(notebooks), progress_bar=False,
                                       kernel_manager_class=_ipc_kernel_manager())
        except papermill.PapermillExecutionError as error:
            raise UserError(f"{name} failed in cell [{error.exec_count}]: "
                            f"{_error_message(error.ename, error.evalue)}\n"
                            f"the partly executed notebook: {output}") from None
    metrics = json.loads((model_dir / "metrics.json").read_text())
    print(f"\ntest accuracy: {metrics['test_accuracy']:.4f} "
          f"(test loss {metrics['test_loss']:.4f}, {metrics['test_images']} test images)")
    print(f"executed notebooks: {run_dir}")
    print(f"model folder:       {model_dir}")
    from .baselines import comparison_line

    print(comparison_line(metrics))
    return 0


def _error_message(name: str, message: str) -> str:
    """A notebook's error as a user reads it: imgcls' own errors (a bad config, bad data) are
    their message; anything else keeps its exception name."""
    return message if name in _user_error_names(UserError) else f"{name}: {message}"


def _user_error_names(error: type) -> set[str]:
    return {error.__name__}.union(*(_user_error_names(sub) for sub in error.__subclasses__()))


def _ipc_kernel_manager() -> type:
    """Jupyter's kernel manager, talking to its kernels over local IPC sockets instead of TCP:
    nothing listens on the network, and ipykernel has no plain-TCP warning to print."""
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import CaselessStrEnum

    class IPCKernelManager(AsyncKernelManager):
        transport = CaselessStrEnum(["tcp", "ipc"], default_value="ipc", config=True)

    return IPCKernelManager


def _kernel_name() -> str:
    """The project's registered kernel when there is one (``make`` registers it), else python3."""
    from jupyter_client.kernelspec import find_kernel_specs

    return "imgcls" if "imgcls" in find_kernel_specs() else "python3"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imgcls", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"imgcls {version('imgcls')}")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, handler, help_text: str, configurable=True) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        if not configurable:
            return sub
        sub.add_argument("--config", help=f"config file (default: ${CONFIG_VARIABLE} if set, else "
                         f"the project's {CONFIG_RELATIVE_PATH})")
        sub.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                         help="override one config value, e.g. --set train.epochs=3 (repeatable)")
        return sub

    command("run", cmd_run, "run the three notebooks in order with papermill")
    command("prepare", cmd_prepare, "scan, split and preprocess the data source")
    train = command("train", cmd_train, "prepare, train, evaluate and save a model folder")
    train.add_argument("--resume", metavar="RUN", help="continue an interrupted run from its "
                       "last finished epoch: its .resumable folder or its name in models_dir")
    cv = command("cv", cmd_cv, "k-fold cross-validation: one model per fold of data.folds, "
                 "each validating on its fold; per-fold and mean +- std scores, and the k "
                 "models' averaged probabilities evaluated on the untouched test split")
    cv.add_argument("--folds", type=int, help="the number of folds (default: data.folds)")
    processed = command("processed", cmd_processed, "list the processed variants of the data "
                        "(one per source and settings), most recently used first")
    processed.add_argument("--clean", action="store_true", help="first delete every variant "
                           "but the one the config uses")
    command("scan", cmd_scan, "report usable and skipped files, class imbalance and "
            "duplicates of the data source")
    command("config", cmd_config, "print the merged, validated config")
    predict = command("predict", cmd_predict, "top-k labels for new images, using the model's "
                      "own class names and preprocessing", configurable=False)
    predict.add_argument("model", type=Path, help="a model folder, an export (exports/<name> "
                         "or one of its versions) or one of its .tflite files")
    predict.add_argument("images", nargs="+", type=Path, help="image files or folders")
    predict.add_argument("--top-k", type=int, default=3)
    explain = command("explain", cmd_explain, "top-k labels for images and, for each, a "
                      "heat map of where the model looked for its top class (Grad-CAM; a "
                      "saliency map for mlp models) over the image, saved as a PNG",
                      configurable=False)
    explain.add_argument("model_folder", type=Path, help="a model folder")
    explain.add_argument("images", nargs="+", type=Path, help="image files or folders")
    explain.add_argument("--out", type=Path, default=Path("explanations"), help="folder for "
                         "the PNGs, <image file name>.<method>.png (default: explanations)")
    explain.add_argument("--top-k", type=int, default=3)
    export = command("export", cmd_export, "export a model folder for TensorFlow Serving (the "
                     "next version under paths.exports_dir/<model name>/) and TensorFlow Lite")
    export.add_argument("model_folder", type=Path)
    export.add_argument("--no-tflite", action="store_true", help="only the SavedModel: no "
                        "TensorFlow Lite variants and no report (which need the model's data)")
    serve = command("serve", cmd_serve, "serve an export over TensorFlow Serving's REST API "
                    "(plus POST /predict uploads, /healthz, /metrics), batching requests and "
                    "loading new versions as they are exported")
    serve.add_argument("target", type=Path, help="an export (paths.exports_dir/<name>: its "
                       "newest version, watched for newer ones; or one version folder) or a "
                       "model folder (exported first, unless its newest export is of it)")
    serve.add_argument("--host", help="address to listen on (default: serve.host, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default: serve.port, 8501; 0: any free "
                       "one)")
    serve.add_argument("--no-batching", action="store_true", help="run each request on its own "
                       "(serve.max_batch_size=1)")
    deploy = command("deploy", cmd_deploy, "validate the deployment settings and write the "
                     "compose.yaml and nginx.conf of imgcls serve replicas behind nginx next to "
                     "them", configurable=False)
    deploy.add_argument("--settings", type=Path, help=f"the deployment settings (default: the "
                        f"project's {DEPLOYMENT_RELATIVE_PATH})")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.handler(args)
    except UserError as error:
        print(f"imgcls: {error}", file=sys.stderr)
        return USER_ERROR
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
        print(f"imgcls: the disk is full ({error}); free some space and run the same command "
              "again: what was finished is kept (an interrupted training run resumes with "
              "--resume)", file=sys.stderr)
        return USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
