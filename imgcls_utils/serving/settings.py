"""What ``imgcls serve`` serves and how: the ``serve:`` settings, and the target (an export,
one of its versions, or a model folder exported first).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from ..config import Config, request_bytes
from ..errors import UserError
from ..files import file_sha256
from ..training.model_folders import CONFIG_FILE, MANIFEST_FILE, MODEL_FILE, model_name
from .export import ExportError, export_model, find_version, read_version, versions


@dataclass(frozen=True)
class ServeSettings:
    """The ``serve:`` section of the config (its defaults live in Hyperparameters.yaml) and
    the project's ``exports_dir`` (where a model folder given to serve is exported)."""

    host: str
    port: int
    max_batch_size: int
    batch_timeout_ms: float
    max_queued_images: int
    max_request_mb: float
    poll_seconds: float
    top_k: int
    api_key_variable: str
    drift_window: int
    exports_dir: Path | None = None

    @classmethod
    def from_config(cls, cfg: Config, **overrides) -> "ServeSettings":
        """The settings of ``cfg``; ``overrides`` (``max_batch_size=1``) replace single ones."""
        values = {**dict(cfg.serve), "exports_dir": cfg.path("exports_dir"), **overrides}
        return cls(**values)

    @property
    def max_request_bytes(self) -> int:
        """The largest request body accepted; the web page checks a file against it too."""
        return request_bytes(self.max_request_mb)

    @property
    def batching(self) -> bool:
        return self.max_batch_size > 1

    def batch_sizes(self) -> list[int]:
        """The batch sizes warmed up at load: powers of two up to ``max_batch_size`` and it."""
        sizes = {1, self.max_batch_size}
        size = 2
        while size < self.max_batch_size:
            sizes.add(size)
            size *= 2
        return sorted(sizes)


@dataclass(frozen=True)
class ServeTarget:
    """What is served: ``exports/<name>`` (its newest version, polled for newer ones) or one
    version folder (``pinned``); ``note`` says how it was chosen."""

    name: str
    folder: Path
    pinned: bool = False
    note: str = ""

    def describe(self) -> str:
        what = (f"version {self.folder.name} of {self.folder.parent} only" if self.pinned
                else f"the newest version under {self.folder}")
        return f"{what}{'; ' + self.note if self.note else ''}"


def resolve_target(path: Path | ServeTarget, exports_dir: Path | None = None) -> ServeTarget:
    """An export (``exports/<name>``, one of its versions) or a model folder, which is exported
    into ``exports_dir`` first unless its newest export is of this very ``model.keras``."""
    if isinstance(path, ServeTarget):
        return path
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} does not exist; serve an export (exports/<name>, or one of its "
                        "version folders) or a model folder")
    if (path / MANIFEST_FILE).is_file():
        return _exported_model_folder(path, exports_dir)
    if (path / "saved_model.pb").is_file():
        if not path.name.isdigit():
            raise ExportError(f"{path} is a SavedModel, but not a version folder: TensorFlow "
                              "Serving's layout is exports/<name>/<version number>/")
        return ServeTarget(read_version(path).name, path.resolve(), pinned=True)
    found = versions(path)
    if found:
        read_version(path / str(found[-1]))  # not written by imgcls export: say so now
        return ServeTarget(path.resolve().name, path.resolve())
    if path.is_dir() and not [child for child in path.iterdir() if not child.name.startswith(".")]:
        return ServeTarget(path.resolve().name, path.resolve(),
                           note="no version there yet: waiting for one")
    raise ExportError(f"{path} is neither an export (exports/<name> holding <version>/"
                      "saved_model.pb, or one such version folder) nor a model folder (with "
                      f"{MANIFEST_FILE})")


def _exported_model_folder(folder: Path, exports_dir: Path | None) -> ServeTarget:
    """Serve a model folder: its newest export when that is of the same ``model.keras``
    (sha256), else a new export, which becomes the newest version."""
    if exports_dir is None:
        raise UserError(f"{folder} is a model folder; serving it exports it first, and no "
                        "exports_dir was given")
    try:
        config = yaml.safe_load((folder / CONFIG_FILE).read_text())
        name = model_name(Config(config, root=folder))
        newest = find_version(Path(exports_dir) / name)  # ExportError when there is none
        if newest.info.get("model_sha256") == file_sha256(folder / MODEL_FILE):
            return ServeTarget(name, (Path(exports_dir) / name).resolve(),
                               note=f"version {newest.version} is the export of {folder}")
    except (OSError, KeyError, TypeError, AttributeError, yaml.YAMLError, UserError):
        pass  # exporting reports what is wrong with the folder
    exported = export_model(folder, Path(exports_dir))
    return ServeTarget(exported.name, exported.folder.parent.resolve(),
                       note=f"exported {folder} as version {exported.version}")
