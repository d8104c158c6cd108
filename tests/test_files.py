import pytest

from imgcls_utils.files import publish, staged, write_atomically


def test_a_staged_folder_replaces_the_old_one_only_when_complete(tmp_path):
    final = tmp_path / "digits"
    with staged(final) as building:
        (building / "a.txt").write_text("first")
    assert [p.name for p in tmp_path.iterdir()] == ["digits"]
    with pytest.raises(RuntimeError, match="killed"):
        with staged(final) as building:
            (building / "a.txt").write_text("second")
            raise RuntimeError("killed")
    assert (final / "a.txt").read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["digits"]  # no staging left behind
    with staged(final) as building:
        (building / "b.txt").write_text("third")
    assert sorted(p.name for p in final.iterdir()) == ["b.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["digits"]


def test_a_staging_folder_left_by_a_killed_build_is_started_afresh(tmp_path):
    (tmp_path / ".digits.staging").mkdir()
    (tmp_path / ".digits.staging" / "half.txt").write_text("half")
    with staged(tmp_path / "digits") as building:
        assert list(building.iterdir()) == []
        (building / "whole.txt").write_text("whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits"]


def test_files_are_replaced_atomically_and_folders_can_refuse_replacing(tmp_path):
    path = tmp_path / "state.json"
    write_atomically(path, "1")
    write_atomically(path, "2")
    assert path.read_text() == "2" and [p.name for p in tmp_path.iterdir()] == ["state.json"]
    (tmp_path / "run.resumable").mkdir()
    (tmp_path / "run").mkdir()
    with pytest.raises(FileExistsError):
        publish(tmp_path / "run.resumable", tmp_path / "run", replace=False)
    assert (tmp_path / "run.resumable").is_dir()
