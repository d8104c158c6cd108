import errno
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from imgcls_utils import data_utils, model_utils
from imgcls_utils.data_utils import DataError
from tests.conftest import write_image
from tests.sample_files import make_messy_folder, tree_hashes


def small(class_folder, **overrides) -> dict:
    return {"data.source": str(class_folder), "data.image_size": [16, 16], "data.channels": 1,
            **overrides}


def test_prepare_builds_then_reuses_then_rebuilds_on_change(class_folder, make_config):
    cfg = make_config(**small(class_folder))
    before = tree_hashes(class_folder)
    first = data_utils.process_data(cfg)
    assert not first.reused and first.input_shape == (16, 16, 1)
    assert sum(first.count(s) for s in data_utils.SPLITS) == 30
    assert data_utils.process_data(cfg).reused
    assert tree_hashes(class_folder) == before
    write_image(class_folder / "dog" / "0.png", seed=999)
    assert not data_utils.process_data(cfg).reused
    write_image(class_folder / "dog" / "new.png", seed=998)
    assert not data_utils.process_data(cfg).reused
    rebuilt = data_utils.process_data(make_config(**small(class_folder, **{
        "data.image_size": [20, 20]})))
    assert not rebuilt.reused and rebuilt.input_shape == (20, 20, 1)
    visible = sorted(p.name for p in rebuilt.folder.parent.iterdir() if p.name[0] != ".")
    assert visible == sorted([first.folder.name, rebuilt.folder.name, "images.duplicates.csv",
                              "images.manifest"])
    assert first.folder.name.startswith("images-16x16x1-")


def test_alternating_settings_reuse_each_variant_and_others_can_be_cleaned(class_folder,
                                                                          make_config):
    sizes = [make_config(**small(class_folder, **{"data.image_size": [side, side]}))
             for side in (16, 20)]
    built = [data_utils.process_data(cfg) for cfg in sizes]
    assert [data_utils.process_data(cfg).reused for cfg in [*sizes, *sizes]] == [True] * 4
    processed_dir = sizes[0].path("processed_dir")
    listed = data_utils.processed_variants(processed_dir)
    assert listed["folder"].tolist() == [built[1].folder.name, built[0].folder.name]
    assert listed["shape"].tolist() == ["20x20x1", "16x16x1"] and listed["images"].tolist() == [30, 30]
    assert data_utils.current_variant(sizes[0]) == built[0].folder
    assert data_utils.remove_variants(processed_dir, keep=built[0].folder) == [built[1].folder.name]
    assert data_utils.processed_variants(processed_dir)["folder"].tolist() == [built[0].folder.name]


@pytest.mark.parametrize("damage", ["truncate a shard", "delete a shard", "edit the split table"])
def test_damaged_processed_data_is_rebuilt_with_a_message(class_folder, make_config, capsys,
                                                          damage):
    cfg = make_config(**small(class_folder))
    folder = data_utils.process_data(cfg).folder
    shard, table = folder / "train-00000-of-00001.tfrecord", folder / "split.csv"
    if damage == "truncate a shard":
        shard.write_bytes(shard.read_bytes()[:-10])
    elif damage == "delete a shard":
        shard.unlink()
    else:
        header, first, *rest = table.read_text().splitlines()
        table.write_text("\n".join([header, first.replace("train", "test"), *rest]))
    capsys.readouterr()
    again = data_utils.process_data(cfg)
    assert not again.reused and "is damaged" in capsys.readouterr().err
    assert data_utils.process_data(cfg).reused
    labels = np.concatenate([y for _, y in data_utils.make_dataset(again, "train", 64)])
    assert len(labels) == again.count("train")


def test_two_processes_preparing_the_same_source_at_once_agree(project):
    command = [sys.executable, "-m", "imgcls_utils.cli", "prepare", "--set=data.image_size=[16,16]"]
    runs = [subprocess.Popen(command, cwd=project, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    states = sorted(out.split("processed data ")[1].split(":")[0] for out, _ in outputs)
    assert states == ["built", "reused (inputs unchanged)"]
    processed = project / "data" / "Processed_Data"
    assert len(list(processed.glob("digits-16x16x1-*/dataset.json"))) == 1
    assert not [p for p in processed.iterdir() if p.name.endswith((".staging", ".replaced"))]
    assert len(list((project / "data" / "Raw_Data" / "digits").rglob("*.png"))) == 1797


@pytest.mark.parametrize("setting", [{"data.min_image_size": [9, 9]},
                                     {"data.near_duplicate_distance": 4},
                                     {"data.max_pixels": 10_000}, {"data.folds": 2},
                                     {"data.seed": 5}, {"data.test_copies_in_train": "exclude"}])
def test_settings_that_shape_the_output_rebuild_and_cache_settings_do_not(class_folder,
                                                                         make_config, setting):
    data_utils.process_data(make_config(**small(class_folder)))
    assert data_utils.process_data(make_config(**small(class_folder, **{
        "data.cache": False, "data.cache_budget_mb": 1}))).reused
    assert not data_utils.process_data(make_config(**small(class_folder, **setting))).reused


def test_split_table_has_path_label_split_hash_group_and_fold(class_folder, make_config):
    processed = data_utils.process_data(make_config(**small(class_folder, **{"data.folds": 2})))
    saved = pd.read_csv(processed.folder / "split.csv")
    assert {"path", "label", "split", "sha256", "group", "fold"} <= set(saved.columns)
    assert set(saved.loc[saved["split"] != "test", "fold"]) == {0, 1}


def test_training_shards_mix_the_classes(class_folder, make_config):
    processed = data_utils.process_data(make_config(**small(class_folder)))
    labels = np.concatenate([y.numpy() for _, y in data_utils.make_dataset(processed, "train", 64)])
    assert sorted(labels) == sorted(processed.images.query("split == 'train'")["label"].map(
        {name: i for i, name in enumerate(processed.class_names)}))
    assert (np.diff(labels) != 0).sum() > 6  # sorted by class would change label only twice


def test_evaluation_datasets_keep_the_split_table_order_across_shards(class_folder, make_config,
                                                                   monkeypatch):
    monkeypatch.setattr("imgcls_utils.data.shards.SHARD_SIZE", 2)
    processed = data_utils.process_data(make_config(**small(class_folder, **{
        "data.val_fraction": 0.3, "data.train_fraction": 0.55})))
    assert len(processed.shards("val")) > 2
    index = {name: i for i, name in enumerate(processed.class_names)}
    for split in data_utils.SPLITS:  # train too: its shards hold it shuffled
        labels = np.concatenate([y for _, y in data_utils.make_dataset(processed, split, 3)])
        assert labels.tolist() == [index[p.split("/")[0]] for p in processed.paths(split)]


def test_cache_auto_caches_what_fits_in_the_budget(class_folder, make_config):
    processed = data_utils.process_data(make_config(**small(class_folder)))
    assert processed.decoded_bytes() == 30 * 16 * 16
    assert data_utils.should_cache(processed, make_config(**{"data.cache_budget_mb": 1}).data)
    assert not data_utils.should_cache(processed, make_config(**{"data.cache_budget_mb": 0}).data)
    assert not data_utils.should_cache(processed, make_config(**{"data.cache": False}).data)


def test_datasets_stream_all_images_and_augment_only_training(class_folder, make_config):
    cfg = make_config(**small(class_folder, **{"augment.rotation": 0.3}))
    processed = data_utils.process_data(cfg)
    augmentation = data_utils.build_augmentation(cfg.augment, seed=1)
    val = data_utils.make_dataset(processed, "val", 4, augmentation=augmentation)
    val_again = data_utils.make_dataset(processed, "val", 4, cache=False)
    for (a, la), (b, lb) in zip(val, val_again):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
        np.testing.assert_array_equal(la.numpy(), lb.numpy())
    train = data_utils.make_dataset(processed, "train", 4, training=True, augmentation=augmentation)
    plain = data_utils.make_dataset(processed, "train", 4)
    images = np.concatenate([x.numpy() for x, _ in train])
    assert images.shape == (processed.count("train"), 16, 16, 1) and images.dtype == np.float32
    assert images.min() >= 0 and images.max() <= 255
    assert sorted(np.concatenate([y.numpy() for _, y in train])) == \
        sorted(np.concatenate([y.numpy() for _, y in plain]))
    raw_sum = np.concatenate([x.numpy() for x, _ in plain]).sum()
    assert not np.isclose(images.sum(), raw_sum)


def test_augmentation_follows_the_config(make_config):
    cfg = make_config(**{"augment.flip": "horizontal", "augment.contrast": 0.2})
    layers = [layer.name for layer in data_utils.build_augmentation(cfg.augment, 0).layers]
    assert layers == ["random_flip", "random_rotation", "random_zoom", "random_translation",
                      "random_contrast"]
    assert data_utils.build_augmentation(make_config(**{"augment.enabled": False}).augment, 0) is None


def test_missing_source_folder_is_a_clear_error(make_config):
    cfg = make_config(**{"data.source": "no_such_folder"})
    with pytest.raises(DataError, match="no_such_folder does not exist"):
        data_utils.process_data(cfg)


def test_a_messy_source_is_trained_on_and_left_exactly_as_it_was(tmp_path, make_config):
    source, outside = tmp_path / "messy", tmp_path / "outside"
    expected_skips = make_messy_folder(source, outside)
    before = tree_hashes(source), tree_hashes(outside)
    cfg = make_config(**{"data.source": str(source), "data.max_pixels": 100_000,
                         "data.image_size": [16, 16], "train.epochs": 1, "train.batch_size": 8,
                         "train.verbose": 0})
    scan = data_utils.scan_source(cfg)
    assert set(scan.skipped["path"]) == set(expected_skips)
    run = model_utils.train(cfg)
    assert (run.model_folder / "model.keras").is_file()
    assert run.evaluation.metrics["test_images"] == data_utils.process_data(cfg).count("test")
    assert (tree_hashes(source), tree_hashes(outside)) == before


def disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_while_writing_shards_keeps_the_previous_processed_data(class_folder,
                                                                           make_config,
                                                                           monkeypatch):
    cfg = make_config(**small(class_folder))
    before = data_utils.process_data(cfg)
    kept = tree_hashes(before.folder)
    write_image(class_folder / "dog" / "new.png", seed=998)  # the next run must rebuild
    monkeypatch.setattr("imgcls_utils.data.shards.example", disk_full)
    with pytest.raises(OSError, match="No space left"):
        data_utils.process_data(cfg)
    assert tree_hashes(before.folder) == kept
    assert not [p for p in before.folder.parent.iterdir() if p.name.endswith(".staging")]
    monkeypatch.undo()  # space freed
    after = data_utils.process_data(cfg)
    assert not after.reused and after.count("train") + after.count("val") + after.count("test") == 31


def test_a_full_disk_is_one_clear_line_on_the_command_line(class_folder, project):
    script = ("import errno, sys; import imgcls_utils.data.shards as s; from imgcls_utils import cli\n"
              "def full(*a): raise OSError(errno.ENOSPC, 'No space left on device')\n"
              "s.example = full\n"
              f"sys.exit(cli.main(['prepare', '--set=data.source={class_folder}']))")
    done = subprocess.run([sys.executable, "-c", script], cwd=project, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("imgcls: the disk is full")


def test_a_small_training_split_is_passed_over_until_an_epoch_has_enough_steps(
        make_config, class_folder):
    cfg = make_config(**{"data.source": str(class_folder), "data.image_size": [8, 8],
                         "train.batch_size": 8, "train.min_steps_per_epoch": 12})
    processed = data_utils.process_data(cfg)
    datasets = data_utils.make_datasets(cfg, processed)
    passes = -(-12 * 8 // processed.count("train"))
    assert len(datasets["train"]) == -(-passes * processed.count("train") // 8) >= 12
    labels = np.concatenate([labels for _, labels in datasets["train"]])
    assert np.bincount(labels).tolist() == [passes * n for n in processed.label_counts("train")]
    assert len(datasets["val"]) == -(-processed.count("val") // 8)  # evaluation: one pass


def test_reuse_trusts_sizes_and_times_and_verify_hashes_every_file(class_folder, make_config,
                                                                  capsys):
    cfg = make_config(**small(class_folder))
    folder = data_utils.process_data(cfg).folder
    shard = folder / "train-00000-of-00001.tfrecord"
    os.utime(shard, ns=(shard.stat().st_atime_ns, shard.stat().st_mtime_ns + 10**9))
    assert data_utils.process_data(cfg).reused  # touched, not changed: hashed once and kept
    stat, content = shard.stat(), bytearray(shard.read_bytes())
    content[len(content) // 2] ^= 1
    shard.write_bytes(bytes(content))
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size, same time
    capsys.readouterr()
    assert data_utils.process_data(cfg).reused
    rebuilt = data_utils.process_data(cfg, verify=True)
    assert not rebuilt.reused and "train-00000-of-00001.tfrecord changed" in capsys.readouterr().err
    assert data_utils.process_data(cfg, verify=True).reused


def test_unchanged_inputs_reuse_the_groups_and_the_split_without_computing_them(
        class_folder, make_config, monkeypatch):
    cfg = make_config(**small(class_folder))
    first = data_utils.process_data(cfg)

    def recomputed(*args, **kwargs):
        raise AssertionError("recomputed")

    monkeypatch.setattr("imgcls_utils.data.duplicates.find_groups", recomputed)
    monkeypatch.setattr("imgcls_utils.data.processed.split_images", recomputed)
    again = data_utils.process_data(cfg)
    assert again.reused and again.images.equals(first.images)
