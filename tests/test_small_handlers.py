"""FiniteLossGuard, ProgressHandler and the bundle helpers of robust_bundles.bundle."""

from __future__ import annotations

import logging
import os

import pytest
import torch
from ignite.engine import Engine

from robust_bundles.bundle import drop_none, find_root, require_file
from robust_bundles.checkpointing import latest_checkpoint
from robust_bundles.handlers import FiniteLossGuard, ProgressHandler


def test_finite_loss_guard_stops_at_the_first_nan():
    seen = []

    def step(engine, batch):
        seen.append(batch)
        return [{"loss": float("nan") if batch == 2 else 1.0}]  # decollated output, as MONAI gives it

    e = Engine(step)
    FiniteLossGuard().attach(e)
    with pytest.raises(FloatingPointError, match="iteration 2"):
        e.run([1, 2, 3])
    assert seen == [1, 2]


def test_progress_handler_logs_epochs_and_eta(caplog):
    e = Engine(lambda e, b: {"loss": torch.tensor(0.5)})
    ProgressHandler("demo", interval_seconds=0).attach(e)
    with caplog.at_level(logging.INFO, logger="robust_bundles.progress"):
        e.run([1, 2], max_epochs=2)
    lines = [r.getMessage() for r in caplog.records if r.name == "robust_bundles.progress"]
    assert any("demo: epoch 2/2, iteration 2/2" in s and "ETA" in s and "last loss 0.5000" in s for s in lines)
    with pytest.raises(ValueError):
        ProgressHandler(interval_seconds=-1)


def test_find_root_from_repo_root_and_bundle_folder(tmp_path, monkeypatch):
    b = tmp_path / "bundles" / "demo_bundle" / "configs"
    b.mkdir(parents=True)
    (b / "metadata.json").write_text('{"name": "demo_bundle"}')
    monkeypatch.chdir(tmp_path)
    assert find_root("demo_bundle") == str(tmp_path / "bundles" / "demo_bundle")
    monkeypatch.chdir(tmp_path / "bundles" / "demo_bundle")
    assert find_root("demo_bundle") == str(tmp_path / "bundles" / "demo_bundle")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="--bundle_root"):
        find_root("other_bundle")


def test_latest_checkpoint_prefers_newest(tmp_path):
    with pytest.raises(FileNotFoundError, match="without --resume"):
        latest_checkpoint(tmp_path)
    torch.save({"trainer": {"epoch": 2}}, tmp_path / "checkpoint_checkpoint_epoch=2.pt")
    torch.save({"trainer": {"epoch": 3}}, tmp_path / "checkpoint_checkpoint_epoch=3.pt")
    assert latest_checkpoint(tmp_path).endswith("epoch=3.pt")
    torch.save({"trainer": {"epoch": 5}}, tmp_path / "checkpoint.pt")
    assert latest_checkpoint(tmp_path).endswith("checkpoint.pt")
    torch.save({"trainer": {"epoch": 1}}, tmp_path / "checkpoint.pt")  # an older final file loses
    assert latest_checkpoint(tmp_path).endswith("epoch=3.pt")
    good = (tmp_path / "checkpoint_checkpoint_epoch=3.pt").read_bytes()
    (tmp_path / "checkpoint_checkpoint_epoch=4.pt").write_bytes(good[: len(good) // 2])  # truncated by a crash
    assert latest_checkpoint(tmp_path).endswith("epoch=3.pt")  # falls back to the newest complete one
    for f in tmp_path.glob("*.pt"):
        f.write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"cannot be read\): train first"):
        latest_checkpoint(tmp_path)


def test_atomic_checkpoint_saver_never_leaves_a_partial_or_missing_file(tmp_path, monkeypatch):
    """The new file is written under a temporary name and renamed; the old one is removed only afterwards."""
    from ignite.engine import Engine, Events

    from robust_bundles.handlers import AtomicCheckpointSaver, KeepLatestCheckpoints

    net = torch.nn.Linear(2, 2)
    engine = Engine(lambda e, b: None)
    saver = AtomicCheckpointSaver(str(tmp_path), {"model": net}, save_interval=1, n_saved=1, epoch_level=True,
                                  file_prefix="checkpoint", save_final=True, final_filename="model.pt")
    saver.attach(engine)
    seen = []

    def spy(engine):
        seen.append(sorted(p.name for p in tmp_path.iterdir()))

    engine.add_event_handler(Events.EPOCH_COMPLETED, spy)
    engine.run([0], max_epochs=3)
    assert seen == [["checkpoint_model_epoch=1.pt"], ["checkpoint_model_epoch=2.pt"], ["checkpoint_model_epoch=3.pt"]]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_model_epoch=3.pt", "model.pt"]

    # a crash while writing epoch 2 (here: torch.save fails half-way) leaves epoch 1 whole, and no temporary file
    real_save = torch.save
    calls = []

    def crash_on_second(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            f.write(b"half a checkpoint")
            raise OSError("killed while saving")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", crash_on_second)
    crash_dir = tmp_path / "crash"
    engine2 = Engine(lambda e, b: None)
    AtomicCheckpointSaver(str(crash_dir), {"model": net}, save_interval=1, n_saved=1, epoch_level=True,
                          file_prefix="checkpoint").attach(engine2)
    with pytest.raises(OSError, match="killed while saving"):
        engine2.run([0], max_epochs=3)
    assert [p.name for p in crash_dir.iterdir()] == ["checkpoint_model_epoch=1.pt"]
    assert set(torch.load(crash_dir / "checkpoint_model_epoch=1.pt", weights_only=True)) == {"weight", "bias"}

    for n in (1, 2, 5):  # the stale epoch files of an interrupted run
        (tmp_path / f"checkpoint_checkpoint_epoch={n}.pt").write_bytes(b"x")
    KeepLatestCheckpoints(tmp_path, keep=1)()
    assert sorted(p.name for p in tmp_path.glob("checkpoint_checkpoint_*")) == ["checkpoint_checkpoint_epoch=5.pt"]


def test_require_file_and_drop_none(tmp_path):
    f = tmp_path / "x.pt"
    with pytest.raises(FileNotFoundError, match="STD model .*x.pt does not exist: train it"):
        require_file(f, "STD model", "train it")
    f.write_bytes(b"1")
    assert require_file(f, "STD model", "train it") == str(f)
    assert drop_none([1, None, 2]) == [1, 2]
    assert os.path.basename(require_file(str(f), "a", "b")) == "x.pt"
