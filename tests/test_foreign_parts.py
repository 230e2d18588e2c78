"""Finding a foreign bundle's parts by structure (:func:`robust_bundles.foreign.parts.discover`), naming them with
``--parts``, and the :class:`MissingPart` messages whose suggested command lines are run here."""

from __future__ import annotations

import csv
import json
import shutil

import pytest

from robust_bundles.foreign.parts import check_parts, discover, follow, target_kind

FLAT = {
    "network_def": {"_target_": "UNet", "spatial_dims": 2},
    "network": "$@network_def.to(@device)",
    "lossfn": {"_target_": "torch.nn.CrossEntropyLoss"},
    "eval_transforms": {"_target_": "Compose", "transforms": []},
    "eval_dataset": {"_target_": "NPZDictItemDataset", "npzfile": "x.npz", "transform": "@eval_transforms"},
    "eval_dataloader": {"_target_": "DataLoader", "dataset": "@eval_dataset"},
    "evaluator": {"_target_": "SupervisedEvaluator", "network": "@network", "val_data_loader": "@eval_dataloader",
                  "key_val_metric": {"acc": {"_target_": "ignite.metrics.Accuracy"}}},
    "trainer": {"_target_": "SupervisedTrainer", "network": "@network", "loss_function": "@lossfn",
                "train_data_loader": {"_target_": "DataLoader", "dataset": {"_target_": "Dataset",
                                                                             "data": "$@partitions[0]"}}},
    "train": {"trainer": "@trainer"},  # a reference: its '#loss_function' is no id
}


def test_discover_flat_ids_references_and_inline_components():
    d = discover(FLAT)
    assert d["trainer"] == "trainer" and d["evaluator"] == "evaluator"
    assert d["network"] == "network_def"  # through "$@network_def.to(@device)"
    assert d["loss"] == "lossfn"
    assert d["dataset"] == "eval_dataset" and d["preprocessing"] == "eval_transforms" and "data" not in d
    assert d["metric"] == "evaluator#key_val_metric"
    assert d["train_loader"] == "trainer#train_data_loader"  # inline: the id where it sits
    assert d["train_data"] == "trainer#train_data_loader#dataset#data"  # an expression: not followed
    assert "inferer" not in d  # the evaluator's default (SimpleInferer)
    assert follow(FLAT, "train#trainer") == "trainer"


def test_discover_workflow_lists_subclasses_and_the_validator():
    cfg = {
        "workflows": [
            {"_target_": "scripts.trainer.DetectionTrainer", "loss_function": "@loss"},
            {"_target_": "SupervisedEvaluator", "inferer": "@a_inferer"},
            {"_target_": "scripts.evaluator.DetectionEvaluator", "inferer": "@b_inferer"},
        ],
        "handlers": [{"_target_": "ValidationHandler", "validator": "@workflows#2"}],
        "loss": {"_target_": "DiceLoss"}, "a_inferer": {"_target_": "SimpleInferer"},
        "b_inferer": {"_target_": "SimpleInferer"},
    }
    d = discover(cfg)
    assert d["trainer"] == "workflows#0" and d["loss"] == "loss"
    assert d["evaluator"] == "workflows#2" and d["inferer"] == "b_inferer"  # the one the trainer validates with
    assert target_kind("monai.engines.SupervisedTrainer") == "trainer"
    assert target_kind("EnsembleEvaluator") == "evaluator"  # a subclass of MONAI's Evaluator
    assert target_kind("Compose") is None and target_kind("$@x") is None


def test_parts_flag_is_checked():
    assert check_parts("{'loss': 'a::b'}") == {"loss": "a#b"}
    with pytest.raises(ValueError, match="unknown part"):
        check_parts({"los": "x"})
    with pytest.raises(ValueError, match="must be a dict"):
        check_parts("lossfn")


# --------------------------------------------------------------------------- a tiny bundle of another shape (YAML)
EVAL_YAML = """\
imports:
  - $import torch
bundle_root: .
device: $torch.device('cpu')
use_imagenet_pretrain: true
network_def:
  _target_: torch.nn.Conv2d
  in_channels: 1
  out_channels: 2
  kernel_size: 1
network: $@network_def.to(@device)
lossfn: {_target_: DiceCELoss, to_onehot_y: true, softmax: true}
eval_transforms:
  _target_: Compose
  transforms: [{_target_: EnsureTyped, keys: [image, label]}]
eval_dataset:
  _target_: Dataset
  data: "$[{'image': torch.linspace(-1, 1, 64).reshape(1, 8, 8) * (k + 1), 'label': (torch.linspace(-1, 1, 64) > 0).float().reshape(1, 8, 8)} for k in range(3)]"
  transform: '@eval_transforms'
eval_dataloader: {_target_: DataLoader, dataset: '@eval_dataset', batch_size: 2}
evaluator:
  _target_: SupervisedEvaluator
  device: '@device'
  network: '@network'
  val_data_loader: '@eval_dataloader'
  key_val_metric:
    val_dice: {_target_: MeanDice, include_background: false}
"""


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    """An evaluation-only bundle (no trainer, so no loss is found by structure) with array data (no file names) and
    weights saved as a checkpoint under 'model' in models/model_key_metric=0.9.pt."""
    import torch

    root = tmp_path_factory.mktemp("tiny") / "tiny_bundle"
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    (root / "configs" / "evaluate.yaml").write_text(EVAL_YAML)
    net = torch.nn.Conv2d(1, 2, 1)
    with torch.no_grad():  # class 1 where the input is positive: a Dice of 1 on the clean data
        net.weight.copy_(torch.tensor([[[[-1.0]]], [[[1.0]]]]))
        net.bias.zero_()
    torch.save({"model": net.state_dict(), "epoch": 3}, root / "models" / "model_key_metric=0.9.pt")
    torch.save({"model": torch.nn.Conv2d(1, 2, 1).state_dict()}, root / "models" / "model_final_iteration=4.pt")
    return root


def _suggested(message: str) -> list[list[str]]:
    """The command lines a message suggests (after '... with: '), as argv lists without the program name."""
    import re
    import shlex

    lines = re.findall(r"with: (robust_bundles .*?)(?= Or define one|$)", message)
    assert lines, message
    out = []
    for line in lines:
        words = shlex.split(line)
        assert words[:2] == ["robust_bundles", "audit"], line
        out.append(words[1:])
    return out


@pytest.mark.parametrize("drop_loss", [False, True], ids=["named", "defined"])
def test_every_suggested_fix_is_a_command_that_runs(tiny_bundle, tmp_path, drop_loss, capsys):
    from robust_bundles.foreign.audit import audit
    from robust_bundles.foreign.cli import main
    from robust_bundles.foreign.parts import MissingPart

    bundle = tiny_bundle
    if drop_loss:  # no loss in the config at all: the message defines one with --override and names it
        bundle = tmp_path / "no_loss"
        shutil.copytree(tiny_bundle, bundle)
        cfg = bundle / "configs" / "evaluate.yaml"
        cfg.write_text(cfg.read_text().replace("lossfn: {_target_: DiceCELoss, to_onehot_y: true, softmax: true}\n",
                                               ""))
    out = tmp_path / "audit"
    with pytest.raises(MissingPart) as e:
        audit(str(bundle), output_dir=str(out), eps=[0.5], pgd_steps=2, ifgsm_steps=0)
    msg = str(e.value)
    assert "loss" in msg and "found evaluator 'evaluator'" in msg
    commands = _suggested(msg)
    assert msg.rstrip().endswith("True}}\"")  # the message ends with the last command line
    if drop_loss:
        assert len(commands) == 1 and "--override" in commands[0] and "robust_loss" in " ".join(commands[0])
    else:  # the id that looks like a loss, then a loss defined by --override
        assert "{'loss': 'lossfn'}" in commands[0] and "--override" in commands[1], commands
    for argv in commands:  # the tool accepts each of its own suggestions, the override key check included
        main(argv)
        assert "audit report:" in capsys.readouterr().out
    info = json.loads((out / "audit.json").read_text())
    assert info["parts"]["loss"]["id"] == "robust_loss"  # the last one run
    assert info["parts"]["inferer"]["type"] == "SimpleInferer"  # the evaluator's default
    assert info["parts"]["weights"].endswith("model_key_metric=0.9.pt")  # the best of models/*.pt
    assert info["pretrained_off"] == ["use_imagenet_pretrain"]
    rows = list(csv.DictReader((out / "robustness.csv").open()))
    assert sorted({r["case"] for r in rows}) == ["item_0", "item_1", "item_2"]  # positions: no file names
    assert [float(r["dice"]) for r in rows if r["attack"] == "clean"] == [1.0, 1.0, 1.0]


def test_parts_flag_names_ids_that_exist(tiny_bundle, tmp_path):
    from robust_bundles.foreign.audit import audit
    from robust_bundles.foreign.parts import MissingPart

    with pytest.raises(MissingPart, match="loss: 'lossfun' \\(did you mean 'lossfn'\\?\\)"):
        audit(str(tiny_bundle), output_dir=str(tmp_path), parts={"loss": "lossfun"})


def test_help_lists_every_flag_with_its_default(capsys):
    import inspect

    from robust_bundles.foreign.audit import audit
    from robust_bundles.foreign.cli import main
    from robust_bundles.foreign.robustify import robustify

    for name, fn in (("audit", audit), ("robustify", robustify)):
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0
        captured = capsys.readouterr()
        text = captured.out + captured.err
        flags = [p for p in inspect.signature(fn).parameters.values() if p.kind is p.POSITIONAL_OR_KEYWORD][1:]
        for p in flags:
            block = text.split(f"--{p.name}=", 1)
            assert len(block) == 2, f"{name} --help lacks --{p.name}"
            entry = block[1].split("\n    -", 1)[0]
            assert f"Default: {p.default!r}" in entry or "Default:" in entry, entry
            assert len(entry.strip().splitlines()) >= 3, f"{name} --{p.name} has no meaning: {entry}"
        assert "BUNDLE_DIR" in text and "Flags are accepted" not in text


def test_find_id_does_not_index_into_a_reference(tmp_path):
    from robust_bundles.foreign.parts import find_id, load_parser

    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "train.json").write_text(json.dumps(FLAT))
    parser = load_parser(tmp_path)
    # "train#trainer" is the string "@trainer": MONAI's parser failed with "invalid literal for int()" here
    assert find_id(parser, "loss", ["train#trainer#loss_function"], required=False) is None
    assert find_id(parser, "loss") == "lossfn"


# ------------------------------------------------------------------------------------- task metrics, sample ids
def test_task_metrics_exact_values_and_kinds():
    import math

    import torch

    from robust_bundles.foreign.metrics import accuracy, choose_kind, mean_point_distance, multilabel_dice

    # 2 labels (overlapping), 4 voxels; logits > 0 is the predicted mask
    pred = torch.tensor([[[1.0, 1.0, -1.0, -1.0], [1.0, -1.0, -1.0, -1.0]]])
    label = torch.tensor([[[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]]])
    # ch0: 2*1/(2+1) = 2/3; ch1: 2*1/(1+2) = 2/3
    assert multilabel_dice(pred, label).tolist() == pytest.approx([2 / 3])
    assert math.isnan(float(multilabel_dice(pred, torch.zeros_like(label))))  # no foreground: does not count
    assert accuracy(torch.tensor([[0.1, 2.0], [3.0, 0.0]]), torch.tensor([1, 1])).tolist() == [1.0, 0.0]
    # points (B, 2, N): distances 5 and 0 -> 2.5
    p = torch.tensor([[[3.0, 1.0], [4.0, 1.0]]])
    y = torch.tensor([[[0.0, 1.0], [0.0, 1.0]]])
    assert mean_point_distance(p, y).tolist() == [2.5]
    assert choose_kind("ignite.metrics.Accuracy", None) == "accuracy"
    assert choose_kind("ignite.metrics.MeanPairwiseDistance", None) == "distance"
    assert choose_kind(None, torch.nn.L1Loss()) == "distance"
    assert choose_kind(None, torch.nn.CrossEntropyLoss()) == "accuracy"
    assert choose_kind("MeanDice", torch.nn.L1Loss()) == "dice"
    assert choose_kind("MeanIoUHandler", None) == "iou"  # endoscopic_tool_segmentation's key metric



def test_sigmoid_metrics_with_an_index_label_and_single_logit_accuracy():
    """renalStructures_CECT's shape: DiceLoss(to_onehot_y=True, sigmoid=True, include_background=False) on a label of
    class indices; pathology_tumor_detection's: one logit per sample with BCEWithLogitsLoss. By hand."""
    import torch
    from monai.losses import DiceLoss

    from robust_bundles.foreign.metrics import accuracy, multilabel_dice, task_metric

    # 3 output channels over 4 pixels; the index label [0, 1, 2, 2] one-hot: ch0 {0}, ch1 {1}, ch2 {2, 3}
    pred = torch.tensor([[[1.0, -1.0, -1.0, -1.0], [1.0, 1.0, -1.0, -1.0], [-1.0, -1.0, 1.0, -1.0]]])
    label = torch.tensor([[[0, 1, 2, 2]]])
    # ch0: {0} vs {0} = 1; ch1: {0, 1} vs {1}: 2*1/3; ch2: {2} vs {2, 3}: 2*1/3
    assert multilabel_dice(pred, label).tolist() == pytest.approx([(1 + 2 / 3 + 2 / 3) / 3])
    assert multilabel_dice(pred, label, include_background=False).tolist() == pytest.approx([2 / 3])
    m, what = task_metric("dice", DiceLoss(to_onehot_y=True, sigmoid=True, include_background=False))
    assert what == "multi-label (sigmoid) Dice"
    assert float(m.compute(pred, {"label": label})["dice"]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="class indices"):
        multilabel_dice(pred, torch.zeros(1, 2, 4))
    # one logit (B, 1, 1, 1) against a 0/1 label: the logit's sign is the class
    logits = torch.tensor([2.0, -1.0, 0.5, -3.0]).reshape(4, 1, 1, 1)
    assert accuracy(logits, torch.tensor([1.0, 1.0, 0.0, 0.0]).reshape(4, 1, 1, 1)).tolist() == [1.0, 0.0, 0.0, 1.0]
    # multi-label classification (BCEWithLogitsLoss): the fraction of labels whose sign is right
    m, what = task_metric("accuracy", torch.nn.BCEWithLogitsLoss())
    out = m.compute(torch.tensor([[1.0, -1.0, 1.0, -1.0]]), {"label": torch.tensor([[1.0, 1.0, 1.0, 0.0]])})
    assert what == "accuracy (sigmoid outputs)" and float(out["accuracy"]) == pytest.approx(0.75)
    # softmax with a one-hot (or probability) label, as endoscopic_inbody_classification
    assert accuracy(torch.tensor([[0.1, 2.0], [3.0, 0.0]]), torch.tensor([[0.0, 1.0], [0.0, 1.0]])).tolist() == [1.0, 0.0]


def test_evaluation_items_take_any_map_style_data_and_refuse_streams():
    import torch
    from monai.data import Dataset

    from robust_bundles.foreign.audit import PositionDataset, evaluation_items

    items = [{"image": torch.full((1, 2, 2), float(i)), "label": torch.zeros(1, 2, 2)} for i in range(6)]
    sub = torch.utils.data.Subset(items, [4, 1])  # ventricular_short_axis_3label: partition -> Subset
    data = evaluation_items(sub, "eval_sub")
    ds = PositionDataset(Dataset(data, None))
    assert [int(ds[i]["sample_position"]) for i in range(2)] == [4, 1]
    assert float(ds[0]["image"][0, 0, 0]) == 4.0
    assert evaluation_items(({"image": "a"},), "x") == [{"image": "a"}]
    with pytest.raises(ValueError, match="without a length"):
        evaluation_items(map(dict, items), "val#cache_datasets")
    with pytest.raises(ValueError, match="is empty"):
        evaluation_items([], "validate#dataset#data")
    with pytest.raises(ValueError, match="not a list of items"):
        evaluation_items("/data/datalist.json", "datalist")

def test_mean_iou_exact_values():
    """IoU per sample, by hand: softmax (argmax) against class indices and one-hot, sigmoid multi-label, and a
    sample without foreground (NaN: it does not count)."""
    import math

    import torch

    from robust_bundles.foreign.metrics import mean_iou, task_metric

    # 2 classes over 4 pixels: the argmax is foreground at pixels 0 and 1, the label at 1 and 2: 1 / 3
    logits = torch.tensor([[[0.0, 0.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0]]])
    label = torch.tensor([[[0, 1, 1, 0]]])
    assert mean_iou(logits, label).tolist() == pytest.approx([1 / 3])
    onehot = torch.tensor([[[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 1.0, 0.0]]])
    assert mean_iou(logits, onehot).tolist() == pytest.approx([1 / 3])
    # sigmoid, 2 channels: ch0 {0, 1} vs {0}: 1 / 2; ch1 {0} vs {0, 1}: 1 / 2
    pred = torch.tensor([[[1.0, 1.0, -1.0, -1.0], [1.0, -1.0, -1.0, -1.0]]])
    ml = torch.tensor([[[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]]])
    assert mean_iou(pred, ml, sigmoid=True).tolist() == pytest.approx([0.5])
    assert math.isnan(float(mean_iou(logits, torch.zeros_like(label))))
    m, what = task_metric("iou", torch.nn.CrossEntropyLoss())
    assert what == "softmax (argmax) IoU" and m.specs[0].name == "iou" and m.specs[0].higher_is_better


def test_sample_ids_are_positions_through_subsets_named_by_file():
    import torch
    from monai.data import Dataset

    from robust_bundles.foreign.audit import POSITION_KEY, PositionDataset
    from robust_bundles.foreign.overlay import CaseIds, SampleIds

    arrays = Dataset([{"image": torch.full((1, 2, 2), float(i))} for i in range(5)])
    sub = torch.utils.data.Subset(torch.utils.data.Subset(arrays, [4, 3, 1]), [2, 0])  # -> positions 1, 4
    ds = PositionDataset(sub)
    assert [ds[i][POSITION_KEY] for i in range(len(ds))] == [1, 4]
    assert float(ds[1]["image"][0, 0, 0]) == 4.0
    ids = SampleIds(sub)
    assert len(ids) == 5 and ids.names[:2] == ["item_0", "item_1"]
    assert ids({POSITION_KEY: torch.tensor([4, 1])}).tolist() == [4, 1]
    files = Dataset([{"image": f"/d/imgs/case_{i}.nii.gz"} for i in range(3)])
    assert SampleIds(torch.utils.data.Subset(files, [2])).names == ["case_0", "case_1", "case_2"]
    with pytest.raises(KeyError, match="PositionDataset"):
        ids({"image": torch.zeros(1)})
    # a datalist without file names: the error names the keys and types and the fix, never the array
    with pytest.raises(TypeError) as e:
        CaseIds([{"image": torch.zeros(100, 100)}])
    assert "Tensor" in str(e.value) and "SampleIds" in str(e.value) and "0., 0." not in str(e.value)


def test_wiring_of_a_flat_bundle(tmp_path):
    from robust_bundles.foreign.parts import load_parser
    from robust_bundles.foreign.robustify import redirects, run_id, wiring

    (tmp_path / "configs").mkdir()
    cfg = {**FLAT, "optimizer": {"_target_": "torch.optim.Adam", "params": "$@network.parameters()"},
           "handlers": [], "training": ["$@trainer.run()"]}
    cfg["trainer"] = {**cfg["trainer"], "optimizer": "@optimizer", "train_handlers": "@handlers"}
    cfg["eval_dataset"] = {**cfg["eval_dataset"], "_target_": "PersistentDataset", "cache_dir": "./cache"}
    cfg["output_dir"] = "./results"
    (tmp_path / "configs" / "train.json").write_text(json.dumps(cfg))
    parser = load_parser(tmp_path)
    w = wiring(parser)
    assert w["_trainer"] == "trainer" and run_id(parser, "trainer") == "training"
    assert w["robust#bundle#loss"] == "@lossfn" and w["robust#bundle#optimizer"] == "@optimizer"
    # the inline dataset is copied out of the loader, whose dataset becomes the position reader of the copy
    assert w["robust#bundle#train_dataset"]["_target_"] == "Dataset"
    assert w["trainer#train_data_loader#dataset"]["dataset"] == "@robust#bundle#train_dataset"
    assert w["trainer#loss_function"] == "@robust#loss" and w["trainer#iteration_update"] == "@robust#iteration"
    assert w["trainer#train_handlers"].startswith("$@robust#method_handlers + @robust#bundle#train_handlers")
    # nothing is written into the bundle folder: outputs and dataset caches go to the output folder
    r = redirects(parser, {"output_dir": "/mine"}, tmp_path / "out")
    assert r == {"eval_dataset#cache_dir": str(tmp_path / "out" / "bundle_cache")}


def test_an_offline_download_names_the_pretrained_flag(tmp_path):
    from robust_bundles.foreign.parts import find, load_parser

    (tmp_path / "configs").mkdir()
    cfg = {"use_imagenet_pretrain": False,
           "network_def": {"_target_": "urllib.request.urlopen", "url": "http://nowhere.invalid/w.pth", "timeout": 1},
           "evaluator": {"_target_": "SupervisedEvaluator", "network": "@network_def"}}
    (tmp_path / "configs" / "evaluate.json").write_text(json.dumps(cfg))
    with pytest.raises(RuntimeError, match="--use_imagenet_pretrain false"):
        find(load_parser(tmp_path), "network")


def test_masking_checks_follow_a_lower_is_better_metric():
    from robust_bundles.foreign.audit import masking_checks

    # a distance: PGD raises it above noise and more at the larger eps, as a working attack does
    summary = {"metric": "distance", "attacks": {"PGD": {"0.5": 189.7, "1": 190.0}, "noise": {"0.5": 188.9, "1": 188.9}}}
    assert masking_checks(summary, higher_is_better=False) == []
    assert len(masking_checks(summary, higher_is_better=True)) == 3  # read as a higher-is-better metric: all fire


def test_bundles_older_than_the_installed_monai_and_numpy(tmp_path, caplog):
    import numpy

    from robust_bundles.foreign.parts import load_parser, missing_packages, numpy_compat

    (tmp_path / "configs").mkdir()
    cfg = {"network_def": {"_target_": "SwinUNETR", "img_size": 96, "in_channels": 1, "out_channels": 2},
           "evaluator": {"_target_": "SupervisedEvaluator", "network": "@network_def"}}
    (tmp_path / "configs" / "evaluate.json").write_text(json.dumps(cfg))
    (tmp_path / "configs" / "metadata.json").write_text(json.dumps(
        {"optional_packages_version": {"numpy": "1.0", "no_such_package_robust_bundles": "1.0"}}))
    parser = load_parser(tmp_path)
    # SwinUNETR's img_size (unused since MONAI 1.3) is gone from MONAI 1.5+: dropped, and said so
    import inspect

    from monai.networks.nets import SwinUNETR

    assert ("img_size" in parser.get("network_def")) == ("img_size" in inspect.signature(SwinUNETR).parameters)
    assert missing_packages(tmp_path) == ["no_such_package_robust_bundles"]
    assert "pip install no_such_package_robust_bundles" in caplog.text
    numpy_compat()
    assert numpy.product is numpy.prod or numpy.__version__ < "2"  # valve_landmarks calls numpy.product


TRAIN_YAML = EVAL_YAML + """\
epochs: 2
train_data: "$[{'image': torch.linspace(-1, 1, 64).reshape(1, 8, 8) * (k + 1), 'label': (torch.linspace(-1, 1, 64) > 0).float().reshape(1, 8, 8)} for k in range(4)]"
optimizer: {_target_: torch.optim.SGD, params: $@network.parameters(), lr: 0.01}
trainer:
  _target_: SupervisedTrainer
  max_epochs: '@epochs'
  device: '@device'
  network: '@network'
  loss_function: '@lossfn'
  optimizer: '@optimizer'
  train_data_loader:
    _target_: DataLoader
    batch_size: 2
    dataset: {_target_: Dataset, data: '$torch.utils.data.Subset(@train_data, [3, 1, 2])', transform: '@eval_transforms'}
  train_handlers: [{_target_: StatsHandler, output_transform: '$lambda x: None'}]
training:
  - $@trainer.run()
"""


def test_robustify_a_flat_bundle_with_array_data_and_inline_parts(tiny_bundle, tmp_path):
    """Flat ids, the trainer's loader, dataset and handlers inline, array data in a Subset, its run list named
    'training', weights in models/model_key_metric=0.9.pt: robustify with no flag but the sizes."""
    import csv as csv_

    from robust_bundles.foreign.robustify import robustify

    bundle = tmp_path / "flat"
    shutil.copytree(tiny_bundle, bundle)
    (bundle / "configs" / "evaluate.yaml").unlink()
    (bundle / "configs" / "train.yaml").write_text(TRAIN_YAML)
    out = tmp_path / "rob"
    info = robustify(str(bundle), output_dir=str(out), epochs=2, pgd_steps=2, expansion_step=0.5)
    assert (out / "checkpoint.pt").is_file() and info["init_model"].endswith("model_key_metric=0.9.pt")
    rows = list(csv_.DictReader((out / "margins.csv").open()))
    # ids are positions in the Subset's underlying data (4 items, 3 trained), named item_<i>
    assert [r["key"] for r in rows] == ["item_0", "item_1", "item_2", "item_3"]
    assert float(rows[0]["margin"]) == 0.5  # never trained on: the initial margin
    wiring = json.loads((out / "bundle_wiring.json").read_text())
    assert wiring["trainer#loss_function"] == "@robust#loss"
    assert not (bundle / "models" / "model.pt").exists()  # the bundle folder is not written to


def test_a_detection_bundle_is_named_not_half_audited(tmp_path):
    from robust_bundles.foreign.audit import audit

    (tmp_path / "configs").mkdir()
    cfg = {"detector": {"_target_": "RetinaNetDetector"},  # lung_nodule_ct_detection's shape
           "train": {"trainer": {"_target_": "scripts.trainer.DetectionTrainer", "detector": "@detector"}}}
    (tmp_path / "configs" / "train.json").write_text(json.dumps(cfg))
    with pytest.raises(NotImplementedError, match="detection bundles.*'train#trainer' runs the detector 'detector'"):
        audit(str(tmp_path), output_dir=str(tmp_path / "o"))


def test_every_method_with_an_overlay_has_a_foreign_overlay_from_the_registry():
    from robust_bundles import methods
    from robust_bundles.foreign.overlay import foreign_methods, method_overlay
    from robust_bundles.foreign.robustify import foreign_method

    assert [m.name for m in foreign_methods()] == [m.name for m in methods.all_methods() if m.overlay]
    for m in foreign_methods():
        o = method_overlay(m.name)
        assert o["robust#iteration"]["iteration"] == "@robust#method_iteration"
        assert o["robust#method_iteration"]["_target_"] == m.iteration
        assert {f"robust#{k}" for k in m.params} <= set(o)  # the entry's params, under robust#
        assert not any(k.startswith("train") and not k.startswith("robust#") for k in o)
    amat = method_overlay("AMAT")  # the main overlay's margin rule reaches the foreign one
    assert amat["robust#margin_rule"] == "fixed" and amat["robust#target_margin"] == 10.0
    with pytest.raises(ValueError, match="STD is the bundle's own training"):
        foreign_method("std")


def test_robustify_with_trades(tiny_bundle, tmp_path):
    """TRADES on the flat bundle: the run gives a model and its checkpoint, at the eps and beta asked for. No robustness
    gain is asserted: the start (1x1 convolution, boundary at input 0) is already the widest-margin classifier of this
    data, so fine-tuning cannot make it more robust; the gain of TRADES is tested in tests/test_adversarial.py."""
    import torch

    from robust_bundles.foreign.robustify import robustify

    bundle = tmp_path / "flat"
    shutil.copytree(tiny_bundle, bundle)
    (bundle / "configs" / "evaluate.yaml").unlink()
    (bundle / "configs" / "train.yaml").write_text(TRAIN_YAML)
    out = tmp_path / "rob"
    info = robustify(str(bundle), output_dir=str(out), method="TRADES", epochs=1, pgd_steps=2, train_eps=0.5,
                     override={"robust#trades_beta": 3.0})
    assert info["method"] == "trades" and "thresholds" not in info and not (out / "thresholds.json").exists()
    overlay = json.loads((out / "trades_overlay.json").read_text())
    assert overlay["robust#method_iteration"]["_target_"] == "robust_bundles.adversarial.TRADESIteration"
    assert "--robust#train_eps 0.5" in info["command"] and "--robust#trades_beta 3.0" in info["command"]
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    start = torch.load(bundle / "models" / "model_key_metric=0.9.pt", weights_only=True)["model"]
    assert ckpt["trainer"]["max_epochs"] == 1 and not torch.equal(ckpt["model"]["weight"], start["weight"])
    with pytest.raises(ValueError, match="use one of vat, teat, amat, trades"):
        robustify(str(bundle), output_dir=str(out), method="std")


def test_noise_settings_units_defaults_and_the_rms_scale(monkeypatch):
    """robustify's noise flags: L2 defaults filled in for 'norm'; 'rms' multiplies by sqrt(values of one training
    input) (hand-checked: 4 x 10 x 10 = 400 values, scale 20) and refuses to guess a missing value."""
    from robust_bundles.foreign import robustify as rf

    given = {"train_eps": None, "expansion_step": None, "initial_margin": None, "max_margin": None, "beta": 0.5}
    info: dict = {}
    out = rf.noise_settings(None, given, ["expansion_step", "initial_margin", "max_margin", "beta"], "norm", 0, info)
    assert out == {"expansion_step": 1.0, "initial_margin": None, "max_margin": None}
    assert info == {"eps_unit": "norm", "noise_l2": {"expansion_step": 1.0}}

    monkeypatch.setattr(rf, "training_input_values", lambda parser, seed, channels=None: 400)
    info = {}
    out = rf.noise_settings(None, {**given, "expansion_step": 0.05, "max_margin": 0.5},
                            ["expansion_step", "initial_margin", "max_margin"], "rms", 0, info)
    assert out == {"expansion_step": pytest.approx(1.0), "initial_margin": None, "max_margin": pytest.approx(10.0)}
    assert info["input_values"] == 400 and info["eps_unit"] == "rms"
    with pytest.raises(ValueError, match=r"--eps_unit rms: give --train_eps R"):
        rf.noise_settings(None, given, ["train_eps"], "rms", 0, {})
    with pytest.raises(ValueError, match="'norm'.*'rms'"):
        rf.noise_settings(None, given, ["train_eps"], "voxel", 0, {})


@pytest.mark.parametrize("config, match", [
    ({"gnetwork": {"_target_": "Generator", "latent_shape": [4]}, "dnetwork": {"_target_": "Discriminator"},
      "trainer": {"_target_": "GanTrainer", "g_network": "@gnetwork", "d_network": "@dnetwork"}},
     "generative: it holds Generator|generative: it holds GanTrainer|generative: it holds Discriminator"),
    ({"network": {"_target_": "DiffusionModelUNet", "spatial_dims": 2},
      "trainer": {"_target_": "SupervisedTrainer", "network": "@network", "loss_function": "$torch.nn.MSELoss()",
                  "prepare_batch": {"_target_": "DiffusionPrepareBatch", "num_train_timesteps": 1000}}},
     "generative: it holds DiffusionModelUNet"),
    ({"network": {"_target_": "UNet"}, "trainer": {"_target_": "AdversarialTrainer", "g_network": "@network"}},
     "needs a supervised engine .*AdversarialTrainer"),
])
def test_generative_and_unsupervised_bundles_are_refused_with_the_reason(tmp_path, config, match):
    """mednist_gan (GanTrainer), mednist_ddpm (a SupervisedTrainer with DiffusionPrepareBatch) and MONAI's
    AdversarialTrainer: refused before anything is built, naming the part; 'Organ' is no GAN."""
    from robust_bundles.foreign.audit import audit
    from robust_bundles.foreign.parts import is_generative

    (tmp_path / "b" / "configs").mkdir(parents=True)
    (tmp_path / "b" / "configs" / "train.json").write_text(json.dumps(config))
    with pytest.raises(NotImplementedError, match=match):
        audit(str(tmp_path / "b"), output_dir=str(tmp_path / "out"))
    assert target_kind("GanTrainer") is None and target_kind("scripts.ldm_trainer.LDMTrainer") is None
    assert not is_generative("scripts.nets.OrganSegmenter") and is_generative("monai.networks.nets.AutoencoderKL")


def test_bundles_written_for_an_older_monai_or_a_gpu_build_here(tmp_path):
    """inbody_outbody_classification's AsChannelFirstd and mednist_gan's AddChanneld (removed in MONAI 1.3) become
    EnsureChannelFirstd; the DiNTS bundles' map_location=torch.device('cuda') becomes the CPU without CUDA; and
    each change is a config override robustify passes to its run."""
    import numpy as np
    import torch

    from robust_bundles.foreign.parts import load_parser

    cfg = {
        "pre": {"_target_": "Compose", "transforms": [
            {"_target_": "AsChannelFirstd", "keys": "image"},
            {"_target_": "AddChanneld", "keys": "label"}]},
        "arch": "$torch.load(@bundle_root + '/a.pt', map_location=torch.device('cuda'))",
        "dev": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",  # conditional: kept
        "space": {"_target_": "TopologySearch", "device": "$torch.device(\"cuda\")"},
    }
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "train.json").write_text(json.dumps(cfg))
    torch.save({"x": torch.ones(1)}, tmp_path / "a.pt")
    parser = load_parser(tmp_path)
    pre = parser.get_parsed_content("pre")
    out = pre({"image": np.zeros((4, 5, 3), np.float32), "label": np.zeros((4, 5), np.float32)})
    assert tuple(out["image"].shape) == (3, 4, 5) and tuple(out["label"].shape) == (1, 4, 5)
    if not torch.cuda.is_available():
        assert parser["arch"] == "$torch.load(@bundle_root + '/a.pt', map_location=torch.device('cpu'))"
        assert parser.get_parsed_content("arch")["x"].device.type == "cpu"
        assert parser["space#device"] == "$torch.device('cpu')"
        assert set(parser.compat) == {"pre#transforms#0", "pre#transforms#1", "arch", "space#device"}
    assert parser["dev"] == cfg["dev"]
    assert parser.compat["pre#transforms#0"] == {"_target_": "EnsureChannelFirstd", "keys": "image", "channel_dim": -1}


def test_weights_default_to_what_the_bundles_checkpoint_loader_loads(tmp_path):
    """pediatric_abdominal_ct_segmentation's evaluate config loads models/dynunet_FT.pt: with no models/model.pt,
    that file, not the newest .pt of models/."""
    import os

    import torch

    from robust_bundles.foreign.audit import resolve_weights
    from robust_bundles.foreign.parts import load_parser

    (tmp_path / "configs").mkdir()
    (tmp_path / "models").mkdir()
    cfg = {"ckpt_dir": "$@bundle_root + '/models'",
           "handlers": [{"_target_": "CheckpointLoader", "load_path": "$@ckpt_dir + '/dynunet_FT.pt'",
                         "load_dict": {"model": "@network"}}]}
    (tmp_path / "configs" / "evaluate.json").write_text(json.dumps(cfg))
    torch.save({}, tmp_path / "models" / "dynunet_FT.pt")
    torch.save({}, tmp_path / "models" / "search_code_1.pt")
    os.utime(tmp_path / "models" / "dynunet_FT.pt", (1, 1))  # the other one is newer
    parser = load_parser(tmp_path, "configs/evaluate.json")
    assert resolve_weights(tmp_path, None, parser) == tmp_path / "models" / "dynunet_FT.pt"
    assert resolve_weights(tmp_path, None) == tmp_path / "models" / "search_code_1.pt"  # without the configs: newest
    torch.save({}, tmp_path / "models" / "model.pt")
    assert resolve_weights(tmp_path, None, parser) == tmp_path / "models" / "model.pt"


def test_an_evaluator_on_the_training_data_is_named():
    """breast-model's evaluator reuses the training data loader: the audit says so (and how to audit held-out
    cases); an evaluator with its own data gets no note."""
    from types import SimpleNamespace

    from robust_bundles.foreign.audit import training_data_notes

    cfg = json.loads(json.dumps(FLAT))
    cfg["evaluator"]["val_data_loader"] = "@trainer#train_data_loader"
    notes = training_data_notes(SimpleNamespace(discovered=discover(cfg)))
    assert len(notes) == 1 and "trainer's own loader ('trainer#train_data_loader')" in notes[0]
    assert "--datalist" in notes[0]
    assert training_data_notes(SimpleNamespace(discovered=discover(FLAT))) == []


def test_robustify_runs_the_bundles_run_list_up_to_its_training():
    """What a bundle runs after its trainer (a save into models/, an export) would write into the bundle folder:
    robust_run keeps the steps up to the trainer's run() and hands back the rest; a bundle without a run list
    runs its trainer alone."""
    from monai.bundle import ConfigParser

    from robust_bundles.foreign.robustify import robust_run

    parser = ConfigParser({"training": ["$print('setup')", "$@train#trainer.run()",
                                        "$torch.save(@network.state_dict(), 'models/model.pt')"],
                           "train": {"trainer": {"_target_": "SupervisedTrainer"}}})
    assert robust_run(parser, "train#trainer") == (["$print('setup')", "$@train#trainer.run()"],
                                                   ["$torch.save(@network.state_dict(), 'models/model.pt')"])
    assert robust_run(ConfigParser({"trainer": {}}), "trainer") == (["$@trainer.run()"], [])
    assert robust_run(ConfigParser({"run": "$@trainer.run()", "trainer": {}}), "trainer") == (["$@trainer.run()"], [])


def test_batch_norm_statistics_recomputed_on_the_clean_training_data(tmp_path):
    """After robustify's fine-tuning, each batch norm's running statistics become the cumulative average over the
    clean training data (train mode, no gradient), written into the checkpoint's model. By hand: 4 images of
    constant value 0, 1, 2, 3 (2 x 2 pixels), batches of 2: batch means 0.5 and 2.5 -> running mean 1.5; each
    batch's unbiased variance over its 8 values is 8 * 0.25 / 7 = 2 / 7."""
    import torch

    from robust_bundles.foreign.parts import load_parser
    from robust_bundles.foreign.robustify import recalibrate_batch_norm, stale_batch_norm

    cfg = {
        "net": {"_target_": "torch.nn.BatchNorm2d", "num_features": 1, "momentum": 0.01},
        "data": "$[{'image': torch.full((1, 2, 2), float(i)), 'label': torch.zeros(1, 2, 2)} for i in range(4)]",
        "pre": {"_target_": "Compose", "transforms": []},
        "ds": {"_target_": "Dataset", "data": "@data", "transform": "@pre"},
        "loader": {"_target_": "DataLoader", "dataset": "@ds", "batch_size": 2},
        "trainer": {"_target_": "SupervisedTrainer", "device": "$torch.device('cpu')", "max_epochs": 1,
                    "train_data_loader": "@loader", "network": "@net", "loss_function": "$torch.nn.MSELoss()",
                    "optimizer": "$torch.optim.SGD(@net.parameters(), lr=0.1)"},
    }
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "train.json").write_text(json.dumps(cfg))
    stale = torch.nn.BatchNorm2d(1).state_dict()  # running mean 0, variance 1
    ckpt = tmp_path / "checkpoint.pt"
    torch.save({"model": stale, "optimizer": {"kept": torch.ones(1)}, "trainer": {"iteration": 16}}, ckpt)
    parser = load_parser(tmp_path)
    # 16 iterations at momentum 0.01 move the statistics 1 - 0.99 ** 16 = 14.9% of the way: stale
    assert stale_batch_norm(parser, ckpt) == {"layers": 1, "momentum": 0.01, "iterations": 16, "moved": 0.149}
    info = recalibrate_batch_norm(parser, ckpt, passes=2)
    assert info == {"layers": 1, "passes": 2, "batches": 4, "batch_size": 2}
    state = torch.load(ckpt, weights_only=True)
    assert float(state["model"]["running_mean"]) == pytest.approx(1.5)
    assert float(state["model"]["running_var"]) == pytest.approx(2 / 7)
    assert float(state["optimizer"]["kept"]) == 1.0 and not (tmp_path / "checkpoint.bn.tmp").exists()
    # a network without batch norm is left alone
    torch.save({"model": stale, "trainer": {"iteration": 100}}, ckpt)  # 1 - 0.99 ** 100 = 63%: not stale
    assert stale_batch_norm(parser, ckpt) is None
    cfg["net"] = {"_target_": "torch.nn.InstanceNorm2d", "num_features": 1}
    (tmp_path / "configs" / "train.json").write_text(json.dumps(cfg))
    torch.save({"model": {}}, ckpt)
    assert recalibrate_batch_norm(load_parser(tmp_path), ckpt) is None


def test_eps_too_small_for_the_input_size_is_named():
    """The default eps (L2 norms 0.5 / 1 / 2) on a 96^3 volume are a per-value RMS of 2 / 96^1.5 = 0.0021 at most:
    the audit says so and names the flags; on a 64 x 64 image (2 / 64 = 0.031) or in rms units it says nothing."""
    from robust_bundles.foreign.audit import small_eps_note

    note = small_eps_note([0.5, 1.0, 2.0], "norm", [96 ** 3])
    assert "is a per-value RMS of 0.0021" in note and '--eps_unit rms --eps "[0.01, 0.02, 0.05]"' in note
    assert small_eps_note([0.5, 1.0, 2.0], "norm", [64 * 64]) == ""
    assert small_eps_note([0.001], "rms", [96 ** 3]) == ""
