"""Runs of the three notebooks through papermill: ``imgcls run`` makes one, ``imgcls sweep``
one per setting and seed.

The executed notebooks are kept next to each other (``1_Data_Exploration.ipynb`` ...), the
Model_Training notebook saves its model folder where the caller says, and a failing cell becomes
one ``NotebookFailed`` line naming the notebook, the cell and the partly executed copy.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from ..config import Config, load_config
from ..errors import UserError
from ..training.model_folders import unused_model_folder_name
from ..training.progress import EPOCH_LINE
from .sweep import REPORT_NOTEBOOK, Sweep, run_sweep
from .sweep_report import results_table, write_tables

NOTEBOOKS = ("Data_Exploration", "Data_Preprocessing", "Model_Training")


class NotebookFailed(UserError):
    """A cell of a notebook raised: the message is its error and where the notebook is."""


def notebooks_folder(root: Path) -> Path:
    """The project's notebooks folder, checked to hold the three notebooks a run executes."""
    folder = Path(root) / "notebooks"
    if not all((folder / f"{name}.ipynb").is_file() for name in NOTEBOOKS):
        raise UserError(f"a run executes the notebooks in {folder}, and they are not all there "
                        f"({', '.join(NOTEBOOKS)}); run it in the imgcls project")
    return folder


def run_project(cfg: Config, config_path: str, overrides: dict[str, Any]) -> tuple[Path, Path]:
    """``imgcls run``: the three notebooks of ``cfg``'s project into ``runs/<timestamp>/`` (with
    the merged config), a line per finished cell and per epoch; ``(run folder, model folder)``."""
    run_dir = cfg.path("runs_dir") / datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg.save(run_dir / "config.yaml")
    model_dir = unused_model_folder_name(cfg)
    run_notebooks(notebooks_folder(cfg.root), run_dir, config_path, overrides, model_dir,
                  cell_lines=True)
    return run_dir, model_dir


def run_sweep_through_notebooks(sweep: Sweep, folder: Path, notebooks: Path,
                                config_path: str) -> list[dict]:
    """``imgcls sweep``: every unfinished run of ``sweep`` through the notebooks into
    ``folder``, then the results tables and the executed Experiments report."""
    def run(run_dir: Path, overrides: dict, model_dir: Path) -> None:
        load_config(config_path, overrides=overrides).save(run_dir / "config.yaml")
        # A sweep compares settings: exporting every run would only cost time and disk.
        run_notebooks(notebooks, run_dir, config_path, overrides, model_dir, export=False)

    def model_dir(overrides: dict) -> Path:
        return unused_model_folder_name(load_config(config_path, overrides=overrides))

    results = run_sweep(sweep, folder, run, model_dir)
    write_tables(folder, results_table(results, sweep.keys), sweep.keys)
    if any(result["status"] == "ok" for result in results):
        execute(notebooks / f"{REPORT_NOTEBOOK}.ipynb", folder / f"{REPORT_NOTEBOOK}.ipynb",
                {"config_path": config_path, "sweep_dir": str(folder)})
    return results


def run_notebooks(notebooks: Path, run_dir: Path, config_path: str, overrides: dict[str, Any],
                  model_dir: Path, cell_lines: bool = False, export: bool = True) -> None:
    """Execute the three notebooks in order into ``run_dir`` with the same config file and
    overrides; Model_Training saves ``model_dir`` (and exports it unless ``export`` is
    false). ``cell_lines``: a line per finished cell."""
    for number, name in enumerate(NOTEBOOKS, start=1):
        parameters = {"config_path": config_path, "overrides": overrides}
        if name == "Model_Training":
            parameters.update(model_dir=str(model_dir), export=export)
        output = Path(run_dir) / f"{number}_{name}.ipynb"
        if cell_lines:
            print(f"running {name} -> {output}", flush=True)
        execute(notebooks / f"{name}.ipynb", output, parameters, cell_lines)


def execute(notebook: Path, output: Path, parameters: dict[str, Any],
            cell_lines: bool = False) -> None:
    """Execute one notebook with papermill in its own folder; a failing cell is NotebookFailed."""
    import papermill

    try:
        papermill.execute_notebook(notebook, output, parameters=parameters,
                                   kernel_name=kernel_name(), cwd=str(notebook.parent),
                                   progress_bar=False, engine_name=_engine(cell_lines),
                                   kernel_manager_class=_ipc_kernel_manager(),
                                   stdout_file=EpochLineEcho() if cell_lines else None)
    except papermill.PapermillExecutionError as error:
        raise NotebookFailed(f"{notebook.stem} failed in cell [{error.exec_count}]: "
                             f"{_error_message(error.ename, error.evalue)}\n"
                             f"the partly executed notebook: {output}") from None


class EpochLineEcho:
    """Papermill's ``stdout_file`` for ``imgcls run``: of what the notebook prints, the training
    cell's epoch lines, echoed as they come (the cell itself runs for minutes)."""

    def __init__(self):
        self._partial = ""

    def write(self, text: str) -> None:
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            if EPOCH_LINE.match(line):
                print(f"    {line}", flush=True)

    def flush(self) -> None:
        """Lines are echoed whole, as soon as they end."""


def _error_message(name: str, message: str) -> str:
    """A notebook's error as a user reads it: imgcls' own errors (a bad config, bad data) are
    their message; anything else keeps its exception name."""
    return message if name in _user_error_names(UserError) else f"{name}: {message}"


def _user_error_names(error: type) -> set[str]:
    return {error.__name__}.union(*(_user_error_names(sub) for sub in error.__subclasses__()))


def _engine(cell_lines: bool) -> str:
    """Papermill's engine name: its own, or one that prints a plain line per finished code cell
    (papermill's progress bar is tqdm: carriage returns all over a log file)."""
    if not cell_lines:
        return "nbclient"
    from papermill.engines import NBClientEngine, NotebookExecutionManager, papermill_engines

    class CellLines(NotebookExecutionManager):
        def cell_complete(self, cell, cell_index=None, **kwargs):
            super().cell_complete(cell, cell_index=cell_index, **kwargs)
            if cell.cell_type == "code":
                code_cells = sum(c.cell_type == "code" for c in self.nb.cells)
                print(f"  cell {cell.execution_count or '-'} of {code_cells} done in "
                      f"{cell.metadata.papermill['duration'] or 0:.1f} s", flush=True)

    class CellLinesEngine(NBClientEngine):
        @classmethod
        def execute_notebook(cls, nb, kernel_name, output_path=None, progress_bar=False,
                             log_output=False, autosave_cell_every=30, **kwargs):
            manager = CellLines(nb, output_path=output_path, progress_bar=False,
                                log_output=log_output, autosave_cell_every=autosave_cell_every)
            manager.notebook_start()
            try:
                cls.execute_managed_notebook(manager, kernel_name, log_output=log_output,
                                             **kwargs)
            finally:
                manager.notebook_complete()
            return manager.nb

    papermill_engines.register("imgcls-cell-lines", CellLinesEngine)
    return "imgcls-cell-lines"


def _ipc_kernel_manager() -> type:
    """Jupyter's kernel manager, talking to its kernels over local IPC sockets instead of TCP:
    nothing listens on the network, and ipykernel has no plain-TCP warning to print."""
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import CaselessStrEnum

    class IPCKernelManager(AsyncKernelManager):
        transport = CaselessStrEnum(["tcp", "ipc"], default_value="ipc", config=True)

    return IPCKernelManager


def kernel_name() -> str:
    """The project's registered kernel when there is one (``make`` registers it), else python3."""
    from jupyter_client.kernelspec import find_kernel_specs

    return "imgcls" if "imgcls" in find_kernel_specs() else "python3"

