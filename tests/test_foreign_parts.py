"""Finding a foreign bundle's parts by structure (:func:`robust_bundles.foreign.parts.discover`), naming them with
``--parts``, and the :class:`MissingPart` messages whose suggested command lines are run here."""

from __future__ import annotations

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
