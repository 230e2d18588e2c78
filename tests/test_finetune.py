"""Robust fine-tuning: robust_bundles.finetune (weights from a file, provenance record) and the InitFromCheckpoint
handler inside a real MONAI SupervisedTrainer."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn
from ignite.engine import Events
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedTrainer
from monai.handlers import CheckpointLoader, CheckpointSaver

from robust_bundles.finetune import INIT_RECORD, load_weights, read_init_record, write_init_record
from robust_bundles.handlers import InitFromCheckpoint
from robust_bundles.tasks.segmentation import DiceCELoss
from robust_bundles.thresholds import sha256_file
from robust_bundles.toy import make_toy_segmentation, toy_network


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return toy_network(filters=(4, 8, 8))


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("layout", ["state_dict", "checkpoint", "ddp_keys"])
def test_load_weights_from_state_dict_or_checkpoint(tmp_path, layout):
    source, target = _net(1), _net(2)
    assert not _same_weights(source, target)
    state = source.state_dict()
    if layout == "checkpoint":  # what CheckpointSaver writes with a save_dict of several entries
        obj = {"model": state, "optimizer": {"state": {}, "param_groups": []}, "trainer": {"epoch": 3}}
    elif layout == "ddp_keys":
        obj = {f"module.{k}": v for k, v in state.items()}
    else:
        obj = state
    path = tmp_path / "model.pt"
    torch.save(obj, path)
    info = load_weights(target, path)
    assert _same_weights(source, target)
    assert info["init_from"] == str(path.resolve()) and info["sha256"] == sha256_file(path)
    assert info["tensors"] == len(state) and info["skipped"] == []


def test_load_weights_keeps_optimizer_references(tmp_path):
    source, target = _net(1), _net(2)
    opt = torch.optim.SGD(target.parameters(), lr=1.0)
    torch.save(source.state_dict(), tmp_path / "m.pt")
    load_weights(target, tmp_path / "m.pt")
    assert all(p is q for p, q in zip(opt.param_groups[0]["params"], target.parameters()))


def test_load_weights_errors_name_file_and_fix(tmp_path):
    with pytest.raises(FileNotFoundError,
                       match=r"initial model \(init_from\) \S*nope\.pt does not exist: train that model first"):
        load_weights(_net(1), tmp_path / "nope.pt")
    torch.save({"optimizer": {"lr": torch.tensor(1.0)}, "epoch": 3}, tmp_path / "opt.pt")
    with pytest.raises(ValueError, match=r"holds no network weights.*'model' entry; it has \['epoch', 'optimizer'\]"):
        load_weights(_net(1), tmp_path / "opt.pt")
    # another network: wider filters (shapes differ) and no deep supervision heads in the target
    torch.manual_seed(0)
    other = toy_network(filters=(8, 8, 8))
    torch.save(other.state_dict(), tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"initial model \(init_from\) \S*other\.pt was trained with another network "
                                         r"than this config builds \(\d+ parameters differ in shape.*input_block\."
                                         r"conv1\.conv\.weight: file 8x1x3x3, network 4x1x3x3.*--filters"):
        load_weights(_net(1), tmp_path / "other.pt")
    extra = dict(_net(3).state_dict(), **{"head.weight": torch.zeros(2)})
    del extra["output_block.conv.conv.bias"]
    torch.save(extra, tmp_path / "extra.pt")
    with pytest.raises(ValueError, match=r"0 parameters differ in shape, 1 missing, 1 unexpected; "
                                         r"output_block\.conv\.conv\.bias: missing in the file; "
                                         r"head\.weight: not in the network"):
        load_weights(_net(1), tmp_path / "extra.pt")


def test_non_strict_copies_what_fits(tmp_path):
    source, target = _net(1), _net(2)
    state = dict(source.state_dict())
    state["output_block.conv.conv.weight"] = torch.zeros(5, 4, 1, 1)  # another number of classes
    torch.save(state, tmp_path / "m.pt")
    before = target.state_dict()["output_block.conv.conv.weight"].clone()
    info = load_weights(target, tmp_path / "m.pt", strict=False)
    assert info["skipped"] == ["output_block.conv.conv.weight"]
    assert torch.equal(target.state_dict()["output_block.conv.conv.weight"], before)
    assert torch.equal(target.state_dict()["input_block.conv1.conv.weight"],
                       source.state_dict()["input_block.conv1.conv.weight"])


def test_init_record_round_trip(tmp_path):
    assert read_init_record(tmp_path) is None  # trained from scratch
    write_init_record(tmp_path / "run", {"init_from": "/a/model.pt", "sha256": "ab", "max_epochs": 6})
    assert read_init_record(tmp_path / "run") == {"init_from": "/a/model.pt", "sha256": "ab", "max_epochs": 6}
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / INIT_RECORD).write_text("[1, 2]")
    with pytest.raises(ValueError, match="does not hold a JSON object"):
        read_init_record(tmp_path / "bad")


def _trainer(net, data, epochs, handlers):
    return SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=epochs,
        train_data_loader=DataLoader(Dataset(data), batch_size=4, shuffle=False),
        network=net,
        optimizer=torch.optim.Adam(net.parameters(), lr=1e-3),
        loss_function=DiceCELoss(),
        train_handlers=handlers,
    )


def test_handler_starts_training_from_the_file_and_records_it(tmp_path):
    data = make_toy_segmentation(8, size=16, seed=1)
    source = _net(1)
    torch.save(source.state_dict(), tmp_path / "std.pt")
    net = _net(2)
    handler = InitFromCheckpoint(str(tmp_path / "std.pt"), net, record_dir=str(tmp_path / "run"))
    tr = _trainer(net, data, epochs=2, handlers=[handler])
    seen = {}
    tr.add_event_handler(Events.ITERATION_STARTED(once=1),
                         lambda e: seen.setdefault("first", _same_weights(net, source)))
    tr.run()
    assert seen["first"]  # the first training step started from the file's weights
    assert not _same_weights(net, source)  # and training went on from there
    record = json.loads((tmp_path / "run" / INIT_RECORD).read_text())
    assert record["init_from"] == str((tmp_path / "std.pt").resolve()) and record["max_epochs"] == 2
    assert record["sha256"] == sha256_file(tmp_path / "std.pt") and handler.info == record


def test_resume_overrides_the_initial_weights(tmp_path):
    """Attached with the trainer, the handler runs before a resume CheckpointLoader attached later: the resumed
    weights win even when the handler is not disabled."""
    data = make_toy_segmentation(8, size=16, seed=2)
    torch.save(_net(1).state_dict(), tmp_path / "std.pt")
    net = _net(2)
    tr = _trainer(net, data, epochs=1, handlers=[InitFromCheckpoint(str(tmp_path / "std.pt"), net)])
    CheckpointSaver(str(tmp_path / "ck"), {"net": net, "trainer": tr}, save_final=True,
                    final_filename="final.pt").attach(tr)
    tr.run()
    trained = {k: v.clone() for k, v in net.state_dict().items()}
    net2 = _net(3)
    tr2 = _trainer(net2, data, epochs=1, handlers=[InitFromCheckpoint(str(tmp_path / "std.pt"), net2)])
    CheckpointLoader(str(tmp_path / "ck" / "final.pt"), {"net": net2, "trainer": tr2}).attach(tr2)
    tr2.run()  # resumes at the end of epoch 1 of 1: no step, the weights are the resumed ones
    assert all(torch.equal(trained[k], v) for k, v in net2.state_dict().items())
