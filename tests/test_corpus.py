"""A generated corpus of every case the tool must survive, through the command line as a user
runs it: `imgcls scan`, then `imgcls run` for one epoch."""

from pathlib import Path

from imgcls_utils.model_utils import left_out_classes, load_model_folder
from tests.conftest import REPO_ROOT
from tests.sample_files import make_corpus, tree_hashes
from tests.test_cli import imgcls


def test_scan_and_run_on_a_corpus_of_every_case(project, tmp_path):
    source, outside = tmp_path / "corpus", tmp_path / "outside"
    skipped, untrainable = make_corpus(source, outside)
    before = tree_hashes(source), tree_hashes(outside)
    (project / "notebooks").symlink_to(REPO_ROOT / "notebooks")
    settings = ["--set", f"data.source={source}", "--set", "data.max_pixels=100000"]

    scan, _ = imgcls("scan", *settings, cwd=project)
    assert scan.returncode == 0, scan.stderr
    for path in skipped:
        assert f"  {path}: " in scan.stdout, f"{path} is not in the report"
    section = scan.stdout.split("classes that cannot be trained: ")[1]
    assert section.startswith(f"{len(untrainable)}\n")
    for name, reason in untrainable.items():
        assert f"  {name}: {reason}" in section

    run, _ = imgcls("run", *settings, "--set", "train.epochs=1",
                    "--set", "train.min_steps_per_epoch=1", "--set", "data.image_size=[16,16]",
                    cwd=project)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "\n    epoch 1/1 (train): loss " in run.stdout  # echoed from the training cell
    assert not [line for line in run.stderr.splitlines() if line.startswith("E0000")], run.stderr
    folder = Path(run.stdout.split("model folder:")[1].split()[0])
    model, class_names, _ = load_model_folder(folder)
    assert class_names == ["cat", "dog", "fox", "lonely"]
    assert set(left_out_classes(folder)) == set(untrainable)
    assert (tree_hashes(source), tree_hashes(outside)) == before
