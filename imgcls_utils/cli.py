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
from importlib.metadata import version
from pathlib import Path

from .config import (CONFIG_RELATIVE_PATH, CONFIG_VARIABLE, Config, default_config_path,
                     find_project_root, load_config, parse_set_option)
from .errors import UserError, warn
from .serving.deployment import DEPLOYMENT_RELATIVE_PATH, load_deployment, write_deployment

USER_ERROR = 2  # exit code: a bad config, data or model folder, told in one line
PREDICTION_FAILED = 3  # exit code: imgcls predict classified some files, not all
SWEEP_RUNS_FAILED = 3  # exit code: imgcls sweep finished, and some of its runs failed
# Commands of earlier versions, and what they are now (one name for processed data).
RENAMED_COMMANDS = {"prepare": ["process"], "processed": ["process", "--list"]}
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


def cmd_process(args) -> int:
    """Build (or reuse) the processed data; with --list or --clean, manage its variants."""
    from . import data_utils

    cfg = _config_from_args(args)
    if args.list or args.clean:
        return _list_processed_variants(cfg, clean=args.clean)
    processed = data_utils.process_data(cfg, verify=args.verify)
    checked = "every file hashed: unchanged" if args.verify else "inputs unchanged"
    print(f"processed data {f'reused ({checked})' if processed.reused else 'built'}: "
          f"{processed.folder}")
    print(data_utils.split_sizes(processed.images).to_string())
    return 0


def _list_processed_variants(cfg: Config, clean: bool) -> int:
    from . import data_utils

    processed_dir = cfg.path("processed_dir")
    if clean:
        for name in data_utils.remove_variants(processed_dir, data_utils.current_variant(cfg)):
            print(f"removed {processed_dir / name}")
    variants = data_utils.processed_variants(processed_dir)
    print(f"no processed data in {processed_dir}" if variants.empty
          else variants.to_string(index=False))
    return 0


def cmd_train(args) -> int:
    cfg, run_folder = _resumed_run(args) if args.resume else (_config_from_args(args), None)
    from .model_utils import train

    run = train(cfg, resume=run_folder)
    if not run.hardware.is_chief:
        print("training done; the chief worker evaluates and saves the model folder")
        return 0
    from .training.baselines import comparison_line

    print(f"test accuracy: {run.evaluation.metrics['test_accuracy']:.4f}")
    print(f"model folder: {run.model_folder}")
    print(comparison_line(run.evaluation.metrics))
    return 0


def cmd_cv(args) -> int:
    """k-fold cross-validation: every fold's config validated, then one model per fold."""
    from .experiments.crossval import cross_validate, fold_configs

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
    from .serving.export import is_export
    from .serving.prediction import predict

    predictions = predict(args.model, args.images, args.top_k)
    if args.model.suffix != ".tflite" and not is_export(args.model):
        _note_left_out_classes(args.model)
    for prediction in predictions:
        print(prediction.line())
    return _exit_code(predictions)


def cmd_explain(args) -> int:
    """Top-k labels as predict gives them, and a heat map overlay PNG per image."""
    from .evaluation.interpret import explain_files

    explanations = explain_files(args.model_folder, args.images, args.out, args.top_k)
    _note_left_out_classes(args.model_folder)
    for explanation in explanations:
        written = f" -> {explanation.overlay}" if explanation.overlay else ""
        print(f"{explanation.prediction.line()}{written}")
    return _exit_code([explanation.prediction for explanation in explanations])


def _exit_code(predictions: list) -> int:
    """0, or PREDICTION_FAILED after saying on stderr how many files could not be classified."""
    failed = sum(bool(prediction.error) for prediction in predictions)
    if failed:
        print(f"imgcls: {failed} of {len(predictions)} file(s) could not be classified",
              file=sys.stderr)
    return PREDICTION_FAILED if failed else 0


def _note_left_out_classes(model_folder: Path) -> None:
    from .training.model_folders import left_out_classes

    for name, reason in left_out_classes(model_folder).items():
        print(f"note: the model was trained without class {name} ({reason}); it never "
              "predicts it", file=sys.stderr)


def cmd_export(args) -> int:
    project = _config_from_args(args)
    from .serving.export import export_model  # not model_utils: the base install can export

    processed = None
    if not args.no_tflite:
        from .data_utils import process_data

        processed = process_data(_model_data_config(args))
    exported = export_model(args.model_folder, project.path("exports_dir"), processed)
    print(f"exported {exported.name} version {exported.version}: {exported.folder}")
    if exported.report:
        print(exported.report_text())
    return 0


def _model_data_config(args) -> Config:
    """This project's config with the data settings a model folder was trained with: where its
    processed data is (rebuilt if it was deleted), in this project."""
    from .training.model_folders import trained_config

    trained = trained_config(args.model_folder)
    data = {f"data.{key}": value for key, value in trained["data"].items()}
    return load_config(args.config, overrides=data, set_options=args.set)


def cmd_serve(args) -> int:
    """Serve an export (or a model folder, exported first) until interrupted."""
    import os

    overrides = dict(parse_set_option(option) for option in args.set or [])
    flags = {"serve.host": args.host, "serve.port": args.port, "serve.grpc_port": args.grpc_port,
             "serve.max_batch_size": 1 if args.no_batching else None}
    overrides.update({key: value for key, value in flags.items() if value is not None})
    cfg = load_config(args.config, overrides=overrides)
    # TensorFlow's C++ warnings (one per undecodable upload) would break the JSON log lines.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from .serving.run import serve
    from .serving.settings import ServeSettings

    serve(args.target, ServeSettings.from_config(cfg))
    return 0


def cmd_deploy(args) -> int:
    """Validate the deployment settings and render, next to them, compose.yaml, nginx.conf and
    the gRPC clients' retry policy, or (--target kubernetes) kubernetes.yaml."""
    settings = load_deployment(args.settings or find_project_root() / DEPLOYMENT_RELATIVE_PATH)
    write = write_deployment
    if args.target == "kubernetes":
        from .serving.kubernetes import write_kubernetes as write
    for path in write(settings):
        print(f"wrote {path}")
    export = (settings.folder / settings.exports_dir / settings.model).resolve()
    if not export.is_dir():
        warn(f"{export} does not exist yet: the replicas serve it, so export the model "
             "(imgcls export) before starting them")
    return 0


def cmd_run(args) -> int:
    """Execute the three notebooks in order with papermill, then report where everything is."""
    cfg = _config_from_args(args)  # before anything heavy: a mistake is reported at once
    from .experiments.notebook_runs import run_project
    from .training.baselines import comparison_line
    from .training.model_folders import METRICS_FILE

    overrides = dict(parse_set_option(option) for option in args.set or [])
    run_dir, model_dir = run_project(cfg, _config_path(args), overrides)
    metrics = json.loads((model_dir / METRICS_FILE).read_text())
    print(f"\ntest accuracy: {metrics['test_accuracy']:.4f} "
          f"(test loss {metrics['test_loss']:.4f}, {metrics['test_images']} test images)")
    print(f"executed notebooks: {run_dir}")
    print(f"model folder:       {model_dir}")
    print(comparison_line(metrics))
    return 0


def cmd_sweep(args) -> int:
    """Validate every run of a sweep, run the unfinished ones through the notebooks, then write
    the results tables and the Experiments report into the sweep folder."""
    from .experiments.sweep import sweep_folder, validate_sweep

    project = _config_from_args(args)
    sweep = _sweep_from_args(args, project.data.seed)
    validate_sweep(sweep, _config_path(args))  # every run, before anything heavy is imported
    from .experiments.notebook_runs import notebooks_folder, run_sweep_through_notebooks

    notebooks = notebooks_folder(project.root)
    folder, resumed = sweep_folder(sweep, project.path("runs_dir"), new=args.new)
    print(f"{'continuing' if resumed else 'new'} sweep {folder}: {len(sweep.runs)} runs",
          flush=True)
    results = run_sweep_through_notebooks(sweep, folder, notebooks, _config_path(args))
    failed = [result["run"] for result in results if result["status"] != "ok"]
    print(f"\nresults: {folder / 'results.md'}")
    if (folder / "Experiments.ipynb").is_file():
        print(f"report:  {folder / 'Experiments.ipynb'}")
    if failed:
        print(f"imgcls: {len(failed)} of {len(results)} runs failed ({', '.join(failed)}); "
              "the table has their errors; run the same command again to retry them",
              file=sys.stderr)
    return SWEEP_RUNS_FAILED if failed else 0


def _sweep_from_args(args, base_seed: int):
    from .experiments.sweep import SweepError, sweep_from_file, sweep_from_options

    if bool(args.spec) == bool(args.grid):
        raise SweepError("imgcls sweep takes a sweep file or --grid options, not both and not "
                         "neither, e.g. imgcls sweep --grid model.family=mlp,cnn")
    if args.spec:
        return sweep_from_file(Path(args.spec), args.name, args.seeds, args.set, base_seed)
    return sweep_from_options(args.grid, args.name, args.seeds, args.set, base_seed)


def _config_path(args) -> str:
    """The config file as an absolute path: the notebooks load the very file this command
    validated, wherever their kernels start."""
    return str(Path(args.config).resolve() if args.config else default_config_path())


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
    sweep = command("sweep", cmd_sweep, "run many settings through the notebooks (a grid or a "
                    "sweep file, repeated over seeds) and compare them in one table and the "
                    "Experiments notebook; running the same sweep again continues it")
    sweep.add_argument("spec", nargs="?", help="a sweep file: name:, grid: (key: [values]) or "
                       "runs: (a list of override mappings), seeds:, common: (shared overrides)")
    sweep.add_argument("--grid", action="append", metavar="SECTION.KEY=V1,V2",
                       help="a swept key and its values, e.g. --grid model.family=mlp,cnn "
                       "(repeatable: every combination runs)")
    sweep.add_argument("--seeds", type=int, help="repeat every setting with this many seeds "
                       "(data.seed, data.seed + 1, ...)")
    sweep.add_argument("--name", help="the sweep's name: its folder is runs/<name>_<timestamp> "
                       "(default: the file's name:, or sweep)")
    sweep.add_argument("--new", action="store_true", help="start a new sweep folder instead of "
                       "continuing the newest one with the same name and runs")
    process = command("process", cmd_process, "scan, split and preprocess the data source into "
                      "paths.processed_dir (reused while the inputs and settings are unchanged)")
    process.add_argument("--list", action="store_true", help="list the processed variants (one "
                         "per source and settings), most recently used first, instead")
    process.add_argument("--clean", action="store_true", help="delete every processed variant "
                         "but the one the config uses, then list them")
    process.add_argument("--verify", action="store_true", help="hash every source image and "
                         "processed file, not trusting unchanged sizes and times")
    train = command("train", cmd_train, "process the data, train, evaluate and save a model folder")
    train.add_argument("--resume", metavar="RUN", help="continue an interrupted run from its "
                       "last finished epoch: its .resumable folder or its name in models_dir")
    cv = command("cv", cmd_cv, "k-fold cross-validation: one model per fold of data.folds, "
                 "each validating on its fold; per-fold and mean +- std scores, and the k "
                 "models' averaged probabilities evaluated on the untouched test split")
    cv.add_argument("--folds", type=int, help="the number of folds (default: data.folds)")
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
    serve = command("serve", cmd_serve, "serve an export over TensorFlow Serving's REST and gRPC "
                    "APIs (plus POST /predict uploads, /healthz, /metrics), batching requests and "
                    "loading new versions as they are exported")
    serve.add_argument("target", type=Path, help="an export (paths.exports_dir/<name>: its "
                       "newest version, watched for newer ones; or one version folder) or a "
                       "model folder (exported first, unless its newest export is of it)")
    serve.add_argument("--host", help="address to listen on (default: serve.host, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default: serve.port, 8501; 0: any free "
                       "one)")
    serve.add_argument("--grpc-port", type=int, help="gRPC port (default: serve.grpc_port, 8500)")
    serve.add_argument("--no-batching", action="store_true", help="run each request on its own "
                       "(serve.max_batch_size=1)")
    deploy = command("deploy", cmd_deploy, "validate the deployment settings and write next "
                     "to them the compose.yaml and nginx.conf of imgcls serve replicas behind "
                     "nginx (and the gRPC clients' retry policy), or a cluster's kubernetes.yaml",
                     configurable=False)
    deploy.add_argument("--target", choices=("compose", "kubernetes"), default="compose")
    deploy.add_argument("--settings", type=Path, help=f"the deployment settings (default: the "
                        f"project's {DEPLOYMENT_RELATIVE_PATH})")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(_renamed_command(sys.argv[1:] if argv is None else argv))
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


def _renamed_command(argv: list[str]) -> list[str]:
    """The arguments with a command's old name replaced by its new one, saying so."""
    if argv and argv[0] in RENAMED_COMMANDS:
        new = RENAMED_COMMANDS[argv[0]]
        warn(f"imgcls {argv[0]} is now imgcls {' '.join(new)}")
        return [*new, *argv[1:]]
    return argv


if __name__ == "__main__":
    sys.exit(main())
