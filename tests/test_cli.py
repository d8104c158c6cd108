import json
import subprocess
import sys
import time

from tests.conftest import REPO_ROOT
from tests.sample_files import UNTRAINABLE, add_untrainable_classes, make_messy_folder


def imgcls(*args, cwd=REPO_ROOT, timeout=300):
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "imgcls_utils.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)
    return done, time.monotonic() - started


def imgcls_light(*args, cwd=REPO_ROOT):
    """``imgcls args`` in a fresh interpreter, and whether it imported TensorFlow on the way: a
    config mistake must be reported before anything heavy is imported (within a second)."""
    script = ("import sys; from imgcls_utils import cli; code = cli.main(sys.argv[1:]); "
              "print('imported tensorflow:', 'tensorflow' in sys.modules); sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", script, *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)
    return done, "imported tensorflow: False" not in done.stdout


CONFIGURABLE = [["run"], ["process"], ["scan"], ["train"], ["cv"], ["export", "folder"],
                ["serve", "folder"], ["sweep", "--grid", "train.epochs=1,2"], ["config"]]


def test_a_misspelled_key_fails_every_command_before_tensorflow_is_imported():
    """One interpreter runs every configurable command with a typo; it prints, after each,
    whether TensorFlow has been imported yet (so the first command that imports it shows)."""
    script = ("import sys; from imgcls_utils import cli\n"
              f"for command in {CONFIGURABLE!r}:\n"
              "    code = cli.main([*command, '--set', 'train.epocs=3'])\n"
              "    print(command[0], code, 'tensorflow' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.stdout.splitlines() == [f"{command[0]} 2 False" for command in CONFIGURABLE], \
        done.stderr[-3000:]
    assert done.stderr.count("did you mean 'train.epochs'") == len(CONFIGURABLE)
    assert "Traceback" not in done.stderr


def test_out_of_range_fraction_names_the_key_and_range():
    done, _ = imgcls("train", "--set", "data.val_fraction=1.5")
    assert done.returncode == 2
    assert "data.val_fraction = 1.5: allowed is a number in (0, 1)" in done.stderr


def test_config_prints_the_merged_config():
    done, _ = imgcls("config", "--set", "train.epochs=3")
    assert done.returncode == 0 and "epochs: 3" in done.stdout


def train_from_the_shell(source, project) -> tuple[subprocess.CompletedProcess, str]:
    """`imgcls train` for one epoch on ``source`` at 16x16, keeping the network (on a handful of
    validation images a baseline can win by chance): the result and the model folder."""
    done, _ = imgcls("train", "--set", f"data.source={source}", "--set", "train.epochs=1",
                     "--set", "data.image_size=[16,16]", "--set", "train.verbose=0",
                     "--set", "train.min_steps_per_epoch=1", "--set", "model.candidates=network",
                     cwd=project)
    assert done.returncode == 0, done.stderr
    return done, done.stdout.split("model folder: ")[1].split("\n")[0].strip()


def test_train_then_predict_from_the_shell(project, class_folder):
    """On three good classes, one of a single image and three that cannot be trained (one
    training serves test_trained_classes' check that a model says what it was trained without)."""
    source = add_untrainable_classes(class_folder)
    done, folder = train_from_the_shell(source, project)
    assert "test accuracy:" in done.stdout
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("network 0.") and " vs best classical baseline " in last, last
    assert "imgcls warning: left out of training" in done.stderr
    manifest = json.loads((project / folder / "manifest.json").read_text())
    assert sorted(manifest["left_out_classes"]) == list(UNTRAINABLE)
    done, _ = imgcls("predict", folder, str(source / "fox" / "3.png"), "--top-k", "2",
                     cwd=project)
    assert done.returncode == 0, done.stderr
    line = done.stdout.strip()
    assert line.startswith(str(source / "fox" / "3.png") + ":")
    assert len([g for g in line.split(": ", 1)[1].split(", ") if g.split()[0] in
                {"cat", "dog", "fox", "lonely"}]) == 2
    assert "note: the model was trained without class empty (empty folder)" in done.stderr


def test_predict_on_a_non_model_folder_is_a_clear_error(tmp_path):
    done, _ = imgcls("predict", str(tmp_path), str(tmp_path))
    assert done.returncode == 2 and "not a finished model folder" in done.stderr


def test_scan_prints_every_skipped_file_imbalance_and_duplicates(project, tmp_path):
    make_messy_folder(tmp_path / "messy", tmp_path / "outside")
    done, _ = imgcls("scan", "--set", f"data.source={tmp_path / 'messy'}",
                     "--set", "data.max_pixels=100000", cwd=project)
    assert done.returncode == 0, done.stderr
    report = done.stdout
    assert "usable images: 38 in 3 classes; skipped files: 16" in report
    assert "class imbalance: largest fox (14), smallest cat (12), ratio 1.17" in report
    assert "cat/truncated.jpg: truncated or corrupt image" in report
    assert "cat/link_out.png: symlink to" in report and "stray.jpg: file outside" in report
    assert "(exact, conflicting labels: excluded, 2 images): cat/same_as_dog_good0.png [cat]" in report
    assert "fox/animated.gif: GIF, 2 frames" in report


def test_version_and_plain_text_help():
    done, _ = imgcls("--version")
    assert done.returncode == 0 and done.stdout.strip() == "imgcls 0.1.0"
    done, _ = imgcls("--help")
    assert done.returncode == 0 and "run the three notebooks" in done.stdout
    assert "``" not in done.stdout and "`" not in done.stdout


def test_a_moved_key_and_yaml_off_are_explained_on_the_command_line():
    done, _ = imgcls("config", "--set", "train.mixed_precision=off")
    assert done.returncode == 2
    assert "'train.mixed_precision' (from overrides) moved to 'hardware.mixed_precision'" in done.stderr
    done, _ = imgcls("config", "--set", "hardware.mixed_precision=off")
    assert "YAML reads an unquoted off" in done.stderr and "Traceback" not in done.stderr


def test_a_failing_notebook_is_one_clear_line_and_the_notebook_to_open(project, tmp_path):
    (project / "notebooks").symlink_to(REPO_ROOT / "notebooks")
    done, _ = imgcls("run", "--set", f"data.source={tmp_path / 'no_such_folder'}", cwd=project)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "without encryption" not in done.stderr  # the kernels talk over IPC, not TCP
    first, second = done.stderr.strip().splitlines()[-2:]
    assert first.startswith("imgcls: Data_Exploration failed in cell [")
    assert f"data.source: folder {tmp_path / 'no_such_folder'} does not exist" in first
    assert "DataError" not in first
    assert "  cell 1 of " in done.stdout and "\r" not in done.stdout  # a plain line per cell
    executed = second.removeprefix("the partly executed notebook: ")
    assert executed.endswith("1_Data_Exploration.ipynb") and (project / executed).is_file()


def test_the_old_processed_data_commands_still_work_and_name_the_new_one(project):
    done, _ = imgcls("processed", cwd=project)
    assert done.returncode == 0, done.stderr
    assert "imgcls processed is now imgcls process --list" in done.stderr
    assert f"no processed data in {project / 'data' / 'Processed_Data'}" in done.stdout
