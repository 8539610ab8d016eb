"""--branch-from (train/loop.py branch): the other run's checkpoint is copied aside and renamed into place, so a
run killed mid-copy is started again without a half checkpoint or an error."""
import pytest

from train.loop import branch


def _checkpoint(folder):
    folder.mkdir(parents=True)
    (folder / "rng_rank0.pt").write_bytes(b"rng")
    (folder / "mp_rank_00_model_states.pt").write_bytes(b"weights")
    return folder


def test_branch_copies_whole_checkpoints_only(tmp_path):
    source = _checkpoint(tmp_path / "other" / "checkpoints" / "step-000002")
    checkpoints = tmp_path / "run" / "checkpoints"
    half = checkpoints / ".branch-step-000002"  # what a copy killed halfway leaves
    half.mkdir(parents=True)
    (half / "rng_rank0.pt").write_bytes(b"rn")
    branch(source, checkpoints, rank=0)
    copied = checkpoints / "step-000002"
    assert sorted(p.name for p in copied.iterdir()) == ["mp_rank_00_model_states.pt", "rng_rank0.pt"]
    assert (copied / "rng_rank0.pt").read_bytes() == b"rng" and not half.exists()
    assert (checkpoints / "latest").read_text() == "step-000002"

    (checkpoints / "latest").unlink()  # killed after the rename, before "latest": the copy is used as it is
    branch(source, checkpoints, rank=0)
    assert (checkpoints / "latest").read_text() == "step-000002"

    with pytest.raises(FileNotFoundError, match="not a trainer checkpoint folder"):
        branch(tmp_path / "other", checkpoints, rank=0)
