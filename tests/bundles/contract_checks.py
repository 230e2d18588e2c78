"""The bundle contract, checked end to end on every bundle: what all five bundles must do alike.

Each bundle's test file sets ``CONTRACT`` (a :class:`Contract`: what differs between the bundles, as these checks
need it) and imports these tests and fixtures with ``from contract_checks import *``, so the same checks run in each
bundle's own file (pytest-xdist runs one file per worker; every config in its own process). A bundle's file adds only
what is its task's: the landmark frames, the detection boxes, the MSD layout, the inference outputs.

The contract: STD training writes ``model.pt`` (a plain state dict), ``checkpoint.pt`` (the network, optimizer,
scheduler and trainer state, loadable with ``weights_only=True``) and ``model_best_val.pt``, on synthetic default data
that it announces; thresholds are estimated on the STD model with the loss's terms and the bundle's rule; every
registered method with eps (VAT, TEAT, ... from ``robust_bundles.methods``) trains under ``<key>_eps<eps>``; AMAT keeps a margin per training sample (floored at its expansion step) in its checkpoint and
``margins.csv``; fine-tuned AMAT starts from the STD weights with the schedule-aware margin; AMAT without thresholds
and an evaluation without a model stop with an error naming the missing file; the metadata passes MONAI's schema
check and the train and inference workflows have every property MONAI requires.
"""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from bundle_run import REPO, Bundle, epoch_of, last_error, load, run

from robust_bundles import methods

#: the registered methods with eps: each trains in every bundle (its overlay rendered from the registry)
WITH_EPS = [m for m in methods.with_overlay() if m.takes_eps]

SCHEMA = "bundles/meta_schema.json"

__all__ = [
    "Contract",
    "contract",
    "root",
    "std",
    "thresholds",
    "amat",
    "test_contract_std_writes_model_and_checkpoints_on_announced_synthetic_data",
    "test_contract_thresholds_follow_the_loss_terms_and_the_bundle_rule",
    "test_contract_method_with_eps_trains",
    "test_contract_amat_keeps_a_margin_per_sample",
    "test_contract_finetuned_amat_starts_from_std_with_the_target_margin",
    "test_contract_amat_without_thresholds_names_the_file",
    "test_contract_evaluate_without_model_names_the_file",
    "test_contract_metadata_passes_the_schema",
    "test_contract_workflow_properties",
]


@dataclass(frozen=True)
class Contract:
    """What differs between the bundles, as the contract checks need it."""

    bundle: Bundle  #: the bundle and its tiny overrides
    data: str  #: the folder of the synthetic default data under ``<output_root>/data``
    terms: tuple[str, ...]  #: the loss's term names (stored with the thresholds)
    samples: int  #: training samples of a tiny run (slices, images): the margin book's size
    target_margin: float  #: target of the fine-tuned AMAT check (over one epoch: Delta = A = the target)
    shape: tuple[str, ...] = ()  #: network-shape arguments every config of a tiny run needs besides ``bundle.tiny``
    workflow_kwargs: dict[str, Any] = field(default_factory=dict)  #: ConfigWorkflow overrides of a tiny network

    def tiny(self, **changes: str) -> list[str]:
        return [*self.bundle.tiny(**changes), *self.shape]

    def run(self, configs: tuple[str, ...], *args: str, expect_ok: bool = True):
        return self.bundle.run(configs, *args, expect_ok=expect_ok)

    def config_value(self, config: str, key: str) -> Any:
        return json.loads((REPO / self.bundle.configs / f"{config}.json").read_text())[key]


# ----------------------------------------------------------------------------------------------------------------------
# shared runs (module scope: once per bundle file)
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def contract(request) -> Contract:
    """The ``CONTRACT`` of the test file that imports these checks."""
    return request.module.CONTRACT


@pytest.fixture(scope="module")
def root(tmp_path_factory, contract) -> Path:
    return tmp_path_factory.mktemp(Path(contract.bundle.folder).name)


@pytest.fixture(scope="module")
def std(contract, root) -> Path:
    """STD trained once (1 epoch); the synthetic default data is written to root/data on the way."""
    proc = contract.run(("train",), *contract.tiny(), "--output_root", str(root))
    assert "SYNTHETIC DATA" in proc.stdout  # a run on the default data says so
    return root / "models" / "std"


@pytest.fixture(scope="module")
def thresholds(contract, std, root) -> Path:
    contract.run(("train", "thresholds"), *contract.tiny(), "--output_root", str(root))
    return std / "thresholds.json"


@pytest.fixture(scope="module")
def amat(contract, thresholds, root) -> Path:
    contract.run(("train", "amat"), *contract.tiny(), "--output_root", str(root))
    return root / "models" / "amat"


# ----------------------------------------------------------------------------------------------------------------------
# training configs
# ----------------------------------------------------------------------------------------------------------------------


def test_contract_std_writes_model_and_checkpoints_on_announced_synthetic_data(contract, std, root):
    for name in ("model.pt", "checkpoint.pt", "model_best_val.pt"):
        assert (std / name).is_file(), name
    ckpt = load(std / "checkpoint.pt")  # weights_only=True
    assert {"model", "optimizer", "lr_scheduler", "trainer"} <= set(ckpt)
    assert epoch_of(ckpt) == 1
    assert set(load(std / "model.pt")) == set(ckpt["model"])  # model.pt is a plain state dict of the network
    assert (root / "data" / contract.data).is_dir()


def test_contract_thresholds_follow_the_loss_terms_and_the_bundle_rule(contract, thresholds):
    data = json.loads(thresholds.read_text())
    assert data["term_names"] == list(contract.terms)
    assert len(data["xi"]) == len(contract.terms) and all(x >= 0 for x in data["xi"])
    assert data["num_samples"] == contract.samples  # every training sample
    assert data["rule"] == contract.config_value("thresholds", "threshold_rule")


@pytest.mark.parametrize("method", WITH_EPS, ids=[m.key for m in WITH_EPS])
def test_contract_method_with_eps_trains(contract, root, std, method):
    contract.run(("train", Path(method.overlay).stem), *contract.tiny(), "--train_eps", "2", "--output_root",
                 str(root))
    run_dir = root / "models" / method.run_name(2)  # the run name follows train_eps
    assert (run_dir / "model.pt").is_file() and epoch_of(load(run_dir / "checkpoint.pt")) == 1


def test_contract_amat_keeps_a_margin_per_sample(contract, amat):
    assert (amat / "model.pt").is_file()
    with open(amat / "margins.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == contract.samples and {"sample_id", "margin"} <= set(rows[0])
    margins = load(amat / "checkpoint.pt")["margins"]  # loadable with weights_only=True
    assert margins["num_samples"] == contract.samples and margins["epochs_completed"] == 1
    assert torch.allclose(margins["margins"], torch.tensor([float(r["margin"]) for r in rows]))
    delta = contract.config_value("amat", "expansion_step")
    assert float(margins["margins"].min()) >= delta - 1e-6  # floored at the expansion step


def test_contract_finetuned_amat_starts_from_std_with_the_target_margin(contract, root, thresholds):
    """finetune.json after amat.json: AMAT from the STD weights (provenance recorded and logged) with the
    schedule-aware margin (the target over the 1 epoch of the run: Delta = A = the target, capped at it)."""
    contract.bundle.check_finetuned_amat(root, contract.target_margin, *contract.shape)


# ----------------------------------------------------------------------------------------------------------------------
# errors that name the file and the fix
# ----------------------------------------------------------------------------------------------------------------------


def test_contract_amat_without_thresholds_names_the_file(contract, root, std, tmp_path):
    proc = contract.run(("train", "amat"), *contract.tiny(), "--dataset_dir", str(root / "data" / contract.data),
                        "--output_root", str(tmp_path), expect_ok=False)
    err = last_error(proc)
    assert str(tmp_path / "models" / "std" / "thresholds.json") in err
    assert "configs/thresholds.json" in err  # says how to make it


def test_contract_evaluate_without_model_names_the_file(contract, root, std):
    proc = contract.run(("train", "evaluate"), *contract.tiny(), "--run_name", "vat_eps9", "--output_root",
                        str(root), expect_ok=False)
    err = last_error(proc)
    assert str(root / "models" / "vat_eps9" / "model.pt") in err and "--model_path" in err
    assert not (root / "eval" / "vat_eps9" / "metrics.csv").exists()


# ----------------------------------------------------------------------------------------------------------------------
# model-zoo checks
# ----------------------------------------------------------------------------------------------------------------------


def test_contract_metadata_passes_the_schema(contract):
    """MONAI's own check (tests/bundles/test_metadata.py checks every field of every bundle in-process)."""
    meta = contract.bundle.meta
    proc = run([sys.executable, "-m", "monai.bundle", "verify_metadata", "--meta_file", meta, "--filepath", SCHEMA])
    assert "metadata is verified with no error" in proc.stdout
    data = json.loads((REPO / meta).read_text())
    assert data["version"] in data["changelog"]


CHECK_PROPERTIES = """
import json, sys
from monai.bundle import ConfigWorkflow
configs, kind, root, extra = sys.argv[1].split(","), sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
w = ConfigWorkflow(config_file=configs, meta_file=sys.argv[5], workflow_type=kind, output_root=root, **extra)
w.initialize()
print("MISSING", w.check_properties())
"""


@pytest.mark.parametrize("kind,config", [("train", "train"), ("infer", "inference")])
def test_contract_workflow_properties(contract, kind, config, root, std):
    """MONAI's required properties of a train and an inference workflow (ConfigWorkflow.check_properties)."""
    files = f"{contract.bundle.configs}/{config}.json"
    proc = run([sys.executable, "-c", CHECK_PROPERTIES, files, kind, str(root), json.dumps(contract.workflow_kwargs),
                contract.bundle.meta])
    assert "MISSING []" in proc.stdout
