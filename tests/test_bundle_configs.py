"""robust_bundles.bundle_configs: a bundle's configs rendered from its family's base and its task.json overlays."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from robust_bundles import bundle_configs as bc

REPO = Path(__file__).resolve().parents[1]
RENDERED = sorted(p.parent for p in (REPO / "bundles").glob(f"*/{bc.TASK_FILE}"))


def test_overlay_follows_monai_overlay_rules():
    base = {"a": 1, "net": {"in": 1, "f": [8, 16]}, "setup": ["x"], "d": {"k": 1}, "keep": {"z": 0}}
    overlay = {"a": 2, "net#in": 2, "net#f#1": 32, "+setup": ["y"], "+d": {"j": 2}, "new#deep": 3, "keep": None}
    assert bc.apply_overlay(base, overlay) == {
        "a": 2, "net": {"in": 2, "f": [8, 32]}, "setup": ["x", "y"], "d": {"k": 1, "j": 2}, "keep": None,
        "new": {"deep": 3},
    }
    assert base["net"] == {"in": 1, "f": [8, 16]} and base["setup"] == ["x"]  # the base is not modified
    with pytest.raises(ValueError, match=r"'\+a' merges a list into a int"):
        bc.apply_overlay(base, {"+a": [1]})
    with pytest.raises(ValueError, match=r"'a#b#c': 'a' is a int"):
        bc.apply_overlay(base, {"a#b#c": 1})


def test_overlay_refuses_a_misspelt_key_with_the_nearest_one():
    base = {"train": {"epochs": 5, "trainer": {}}, "epochs": 5, "setup": []}
    with pytest.raises(ValueError, match=r"'trian#epochs': 'trian' is not a key .* \(nearest: 'train'\)"):
        bc.apply_overlay(base, {"trian#epochs": 1}, new_keys=[])
    with pytest.raises(ValueError, match=r"'train#epoch':.* at train \(nearest: 'train#epochs'\).*new_keys"):
        bc.apply_overlay(base, {"train#epoch": 1}, new_keys=[])
    with pytest.raises(ValueError, match=r"'\+setpu'.*nearest: 'setup'"):
        bc.apply_overlay(base, {"+setpu": ["x"]}, new_keys=[])
    # a key listed in new_keys adds (and what is under it), an existing key replaces, descriptions are free
    out = bc.apply_overlay(base, {"channels": 1, "train#channels": 2, "train#epochs": 1, "_desc_channels": "c"},
                           new_keys=["channels", "train#channels"])
    assert out == {"train": {"epochs": 1, "trainer": {}, "channels": 2}, "epochs": 5, "setup": [], "channels": 1,
                   "_desc_channels": "c"}


def test_all_five_bundles_are_rendered_from_one_base():
    assert [p.name for p in RENDERED] == ["bccd_blood_cell_detection", "cephalometric_xray_landmarks",
                                          "heart_mri_segmentation", "hippocampus_mri_segmentation",
                                          "prostate_mri_segmentation"]
    assert [p.name for p in (REPO / "bundles").iterdir() if p.is_dir()] and all(
        (p / bc.TASK_FILE).is_file() for p in (REPO / "bundles").iterdir() if (p / "configs").is_dir())
    # the hippocampus bundle is the base itself: an empty overlay, configs unchanged
    assert json.loads((REPO / "bundles/hippocampus_mri_segmentation" / bc.TASK_FILE).read_text())["configs"] == {}


@pytest.mark.parametrize("bundle", RENDERED, ids=[p.name for p in RENDERED])
def test_committed_configs_equal_their_rendering(bundle):
    """Edit common/configs/<family>/ or the bundle's task.json, then run python scripts/bundles.py render."""
    assert bc.stale_configs(bundle) == []


def test_render_writes_only_what_differs_and_reports_bad_task_files(tmp_path):
    bundle = tmp_path / "b"
    (bundle / "configs").mkdir(parents=True)
    (bundle / bc.TASK_FILE).write_text(json.dumps({"family": "base", "common": {"num_classes": 7},
                                                   "configs": {"vat.json": {"train_eps": 9},
                                                               "inference.json": {"num_classes": 5}}}))
    written = bc.render_bundle(bundle)
    names = sorted(p.name for p in written)
    assert names == sorted(p.name for p in bc.family_dir("base").iterdir())
    config = {p.stem: json.loads(p.read_text()) for p in (bundle / "configs").glob("*.json")}
    assert config["vat"]["train_eps"] == 9 and "num_classes" not in config["vat"]
    # "common" goes to the configs that run alone (train, inference), before their own overlay
    assert config["train"]["num_classes"] == 7 and config["inference"]["num_classes"] == 5
    assert (bundle / "configs" / "logging.conf").read_text() == (bc.family_dir("base") / "logging.conf").read_text()
    assert '"expected_labels": [0, 1, 2],' in (bundle / "configs" / "train.json").read_text()  # short lists on one line
    assert bc.render_bundle(bundle) == [] and bc.stale_configs(bundle) == []
    (bundle / "configs" / "vat.json").write_text('{"train_eps": 1}')  # a hand edit is found
    assert bc.stale_configs(bundle) == ["vat.json"]
    (bundle / bc.TASK_FILE).write_text(json.dumps({"family": "base", "configs": {"nope.json": {}}}))
    with pytest.raises(ValueError, match=r"overlays \['nope.json'\], which the 'base' family does not have"):
        bc.rendered_configs(bundle)
    (bundle / bc.TASK_FILE).write_text(json.dumps({"family": "detection3d"}))
    with pytest.raises(ValueError, match="no config family 'detection3d'"):
        bc.rendered_configs(bundle)
    assert bc.rendered_configs(tmp_path) == {}  # no task.json: not a rendered bundle


def test_method_overlays_take_the_registry_params_and_the_task_values_once(tmp_path):
    """A method's rendered overlay starts with its registry entry's params; a task's "method_values" (its eps units,
    its outputs) replace the defaults in every method that takes them; the base may not repeat them."""
    from robust_bundles import methods

    assert methods.overlay_params("teat.json") == {"train_eps": 6.0, "output_activation": "softmax"}
    assert methods.overlay_params("teat.json", {"train_eps": 3}) == {"train_eps": 3, "output_activation": "softmax"}
    assert methods.overlay_params("amat.json", {"train_eps": 3}) == {} == methods.overlay_params("train.json")
    bundle = tmp_path / "b"
    (bundle / "configs").mkdir(parents=True)
    (bundle / bc.TASK_FILE).write_text(json.dumps({"family": "base", "method_values": {"train_eps": 15.0}}))
    rendered = {k: json.loads(v) for k, v in bc.rendered_configs(bundle).items() if k.endswith(".json")}
    assert rendered["vat.json"]["train_eps"] == rendered["teat.json"]["train_eps"] == 15.0
    assert rendered["teat.json"]["output_activation"] == "softmax"  # the registry's default
    assert rendered["teat.json"]["train#trainer#iteration_update"]["activation"] == "@output_activation"
    assert "train_eps" not in rendered["amat.json"]
    (bundle / bc.TASK_FILE).write_text(json.dumps({"family": "base", "method_values": {"train_epz": 1}}))
    with pytest.raises(ValueError, match=r"\"method_values\" \['train_epz'\] are taken by no registered method"):
        bc.rendered_configs(bundle)
    base = json.loads((bc.family_dir("base") / "vat.json").read_text())
    assert "train_eps" not in base  # the registry's, not the base's


def test_derive_overlay_inverts_apply_overlay_with_deletions_and_literal_path_keys():
    base = {"net": {"in": 1, "f": [8, 16, 32, 64, 128], "drop": 0.1, "norm": "instance"}, "slices": {"axis": 2},
            "epochs": 5}
    own = {"net": {"in": 3, "f": [8, 16, 32, 64, 128], "norm": "instance", "heads": 2}, "epochs": 5, "points": 19}
    overlay, new = bc.derive_overlay(base, own)
    assert overlay == {"net#in": 3, "net#heads": 2, "~net#drop": None, "points": 19, "~slices": None}
    assert new == ["net#heads", "points"]
    assert bc.apply_overlay(base, overlay, new_keys=new) == own
    # a method overlay file holds MONAI path keys literally; a new one stays literal (not a top-level "train" dict)
    teat = {"train_eps": 6.0, "train#trainer#iteration_update": {"_target_": "TEAT", "activation": "softmax"}}
    own = {"train_eps": 3.0, "train#trainer#iteration_update": {"_target_": "TEAT", "activation": "sigmoid"},
           "validate#evaluator#amp": False}
    overlay, new = bc.derive_overlay(teat, own)
    assert overlay == {"train_eps": 3.0, "train#trainer#iteration_update#activation": "sigmoid",
                       "validate#evaluator#amp": False} and new == ["validate#evaluator#amp"]
    rendered = bc.apply_overlay(teat, overlay, new_keys=new)
    assert rendered == own and "train" not in rendered and "validate" not in rendered
    with pytest.raises(ValueError, match="deletes 'nope'"):
        bc.apply_overlay(base, {"~nope": None}, new_keys=[])
    with pytest.raises(ValueError, match="value must be null"):
        bc.apply_overlay(base, {"~epochs": 1}, new_keys=[])


def test_derive_overlay_writes_lists_by_element_or_appended_and_dicts_whole_when_shorter():
    base = {"handlers": [{"t": "Stats", "out": "first"}, {"t": "TB", "out": "first"}, "@saver"],
            "run": ["@setup", "$run()"], "inferer": {"_target_": "SlidingWindow", "roi": [64, 64], "overlap": 0.5,
                                                     "mode": "gaussian"}}
    own = {"handlers": [{"t": "Stats", "out": "@loss"}, {"t": "TB", "out": "@loss"}, "@saver"],
           "run": ["@setup", "$run()", "$report()"], "inferer": {"_target_": "Simple"}}
    overlay, new = bc.derive_overlay(base, own)
    # two changed fields of a 3-element list: by element; an extended list: "+"; a replaced dict: whole (shorter)
    assert overlay == {"handlers#0#out": "@loss", "handlers#1#out": "@loss", "+run": ["$report()"],
                       "inferer": {"_target_": "Simple"}} and new == []
    assert bc.apply_overlay(base, overlay, new_keys=new) == own
    # a list whose every element changes is written whole
    overlay, _ = bc.derive_overlay({"a": [1, 2, 3]}, {"a": [4, 5, 6]})
    assert overlay == {"a": [4, 5, 6]}


def test_format_task_fills_new_keys_into_lines_and_stays_json():
    task = {"family": "base", "new_keys": [f"key_number_{i}" for i in range(20)], "configs": {}}
    text = bc.format_task(task)
    assert json.loads(text) == task
    lines = text.splitlines()
    assert len(lines) < 12 and all(len(line) <= 120 for line in lines)


def test_derive_task_of_a_bundle_renders_its_configs(tmp_path):
    """A bundle written by hand gets its task.json from derive_task; rendering from it changes none of its configs."""
    bundle = REPO / "bundles" / "cephalometric_xray_landmarks"
    task = bc.derive_task(bundle, "base")
    copy = tmp_path / bundle.name  # bundle_root is rendered from the folder name
    (copy / "configs").mkdir(parents=True)
    for f in (bundle / "configs").glob("*.json"):
        (copy / "configs" / f.name).write_text(f.read_text())
    (copy / "configs" / "logging.conf").write_text((bundle / "configs" / "logging.conf").read_text())
    (copy / bc.TASK_FILE).write_text(json.dumps(task))
    assert bc.stale_configs(copy) == []
    assert task["configs"]["thresholds.json"] == {"threshold_rule": "mean_std"}
    # what train.json and inference.json set alike (the network, its size, the image size) is written once
    assert {"network_def", "image_size", "num_landmarks"} <= set(task["common"])
    assert "network_def" not in task["configs"]["train.json"] and "network_def" not in task["configs"]["inference.json"]
    # the X-ray bundle's samples come from its own reader, with its own split settings (no MSD label list)
    samples = task["configs"]["train.json"]["samples"]
    assert samples["_target_"] == "robust_bundles.data.ceph.load_ceph" and "expected_labels" not in samples


def test_bundles_derive_writes_the_task_json_a_bundle_renders_from(tmp_path):
    """scripts/bundles.py derive: a bundle whose configs were edited by hand gets the task.json that renders them."""
    import shutil
    import subprocess
    import sys

    copy = tmp_path / "bccd"
    shutil.copytree(REPO / "bundles" / "bccd_blood_cell_detection", copy,
                    ignore=shutil.ignore_patterns("models", "runs", "eval", "data"))
    train = json.loads((copy / "configs" / "train.json").read_text())
    train["epochs"] = 7  # a hand edit of a rendered config
    (copy / "configs" / "train.json").write_text(json.dumps(train))
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "bundles.py"), "derive", str(copy)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "configs match their rendering: True" in proc.stdout
    task = json.loads((copy / bc.TASK_FILE).read_text())
    assert task["configs"]["train.json"]["epochs"] == 7
    assert task["_desc_"] == json.loads((REPO / "bundles" / "bccd_blood_cell_detection" / bc.TASK_FILE).read_text())["_desc_"]
    assert bc.stale_configs(copy) == []
