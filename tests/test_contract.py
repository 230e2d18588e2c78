"""robust_bundles.contract: the ids a bundle's train.json must define for the method overlays, checked on our five
bundles and on the model zoo's spleen bundle (a bundle we did not write)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import forkserver
import pytest

from robust_bundles import contract

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = sorted((ROOT / "bundles").glob("*/configs/train.json"))
#: ROBUST_BUNDLES_FOREIGN_BUNDLES names the folder of foreign bundles when the repository is not beside ../shared
FOREIGN = Path(os.environ.get("ROBUST_BUNDLES_FOREIGN_BUNDLES", ROOT / ".." / "shared" / "foreign_bundles"))
SPLEEN = (FOREIGN / "spleen_ct_segmentation" / "configs" / "train.json").resolve()


@pytest.mark.parametrize("train", BUNDLES, ids=[p.parents[1].name for p in BUNDLES])
def test_our_bundles_keep_the_contract(train):
    assert len(BUNDLES) == 5
    assert contract.check(train) == []


@pytest.mark.skipif(not SPLEEN.is_file(), reason=f"the spleen bundle is not at {SPLEEN}")
def test_a_foreign_bundle_gets_the_missing_ids_and_the_fix():
    problems = contract.check(SPLEEN, ["vat"])
    assert len(problems) == 1 and "'training_attack' missing" in problems[0] and "read by vat.json" in problems[0]
    assert "Fix: add \"training_attack\"" in problems[0] and str(SPLEEN) in problems[0]
    missing = {p.split("id '")[1].split("'")[0] for p in contract.check(SPLEEN)}
    assert missing == {"train#datalist", "train#save_dict", "train#method_handlers", "training_attack",
                       "thresholds_file", "output_root", "resume", "network_hint", "batch_size", "num_workers", "amp",
                       "setup"}
    # the MONAI ids the spleen bundle has are not asked again: device, network, loss, epochs, train#trainer, ...
    with pytest.raises(contract.ContractError, match="12 problem"):
        contract.require(SPLEEN)


def test_an_id_that_nothing_reads_is_a_problem_and_adding_the_reference_fixes_it():
    base = {"train": {"method_handlers": [], "trainer": {"train_handlers": "@train#handlers"}, "handlers": []}}
    problems = contract.check(base, ["amat"])
    assert any("'train#method_handlers' is defined but nothing reads it" in p for p in problems)
    base["train"]["trainer"]["train_handlers"] = "$@train#method_handlers + @train#handlers"
    assert not any("method_handlers" in p for p in contract.check(base, ["amat"]))
    with pytest.raises(contract.ContractError, match="Unknown overlay"):
        contract.check(base, ["amatt"])


def test_command_line_ends_with_an_error_line(tmp_path):
    cfg = tmp_path / "train.json"
    cfg.write_text('{"training_attack": {}, "train": {"trainer": {}}}')
    # forked from the tests' fork server (tests/forkserver.py): its own process, without importing MONAI again
    ok = forkserver.run([sys.executable, "-m", "robust_bundles.contract", str(cfg), "--overlays", "[vat]"], Path.cwd(),
                        timeout=120, stderr_apart=True)
    assert ok.returncode == 0 and ok.stdout.startswith("OK:")
    bad = forkserver.run([sys.executable, "-m", "robust_bundles.contract", str(cfg), "--overlays", "[vat,amat]"],
                         Path.cwd(), timeout=120, stderr_apart=True)
    assert bad.returncode == 1 and bad.stderr.strip().splitlines()[-1].startswith("ERROR (contract):")
    assert "'train#datalist' missing" in bad.stdout


def test_the_contract_derives_from_the_method_registry():
    """A registered method's overlay is in OVERLAYS and its reads make the properties' readers and the check."""
    from robust_bundles import methods

    methods.register(methods.Method("ZED", overlay="zed.json", reads=("training_attack", "loss")))
    try:
        assert "zed" in contract.OVERLAYS
        props = contract.PROPERTIES
        assert "zed" in props["training_attack"]["overlays"] and "zed" in props["loss"]["overlays"]
        assert "zed" not in props["datalist"]["overlays"]
        problems = contract.check({"train": {"trainer": {}}}, ["zed"])
        assert [p.split("id '")[1].split("'")[0] for p in problems] == ["loss", "training_attack"]
    finally:
        methods.unregister("ZED")
    assert "zed" not in contract.OVERLAYS
    methods.register(methods.Method("ZED", overlay="zed.json", reads=("trainer", "no_such_id")))
    try:
        with pytest.raises(contract.ContractError, match="no_such_id"):
            contract.check({}, ["vat"])
    finally:
        methods.unregister("ZED")
