"""One vocabulary of keys across the five bundles, as far as the experiment and study tools pass keys: every bundle
has ``max_cases``, ``max_val_cases``, ``eval_split`` and ``max_test_cases``; the former landmark/BCCD words
(``max_images``, ``max_val_images``, ``max_test_images``) are refused with the new name on the command line, in
``--override`` and in a config file; ``eval_split`` chooses the evaluated split of the landmark bundle."""

from __future__ import annotations

import json

import pytest
from bundle_run import REPO, Bundle, last_error

from robust_bundles import bundle as rb
from robust_bundles import experiment

BUNDLES = sorted(p for p in (REPO / "bundles").iterdir() if (p / "configs" / "train.json").is_file())
CEPH = REPO / "bundles" / "cephalometric_xray_landmarks"


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_every_bundle_has_the_keys_the_tools_pass(bundle):
    train = json.loads((bundle / "configs" / "train.json").read_text())
    evaluate = json.loads((bundle / "configs" / "evaluate.json").read_text())
    assert {"max_cases", "max_val_cases"} <= set(train) and {"eval_split", "max_test_cases"} <= set(evaluate)
    assert evaluate["eval_split"] == "test" and "@eval_split" in evaluate["test"]["datalist"]
    assert "@max_test_cases" in evaluate["test"]["datalist"]
    assert "threshold_rule" in json.loads((bundle / "configs" / "thresholds.json").read_text())
    assert "ifgsm_steps" in json.loads((bundle / "configs" / "robustness.json").read_text())
    for old in rb.RENAMED_KEYS:  # nowhere in the configs, the profiles included
        for path in (bundle / "configs").rglob("*.json"):
            assert f'"{old}"' not in path.read_text() and f"@{old})" not in path.read_text(), (path, old)


def test_renamed_keys_are_refused_with_their_new_name(tmp_path):
    configs = [str(CEPH / "configs" / c) for c in ("train.json", "evaluate.json")]
    with pytest.raises(ValueError) as info:
        rb.check_command_line(["run", "--config_file", json.dumps(configs), "--max_test_images", "3", "--epochs", "1"])
    assert str(info.value).startswith("Unknown config key(s) on the command line: --max_test_images: renamed "
                                      "--max_test_cases (one vocabulary of keys across the bundles)")
    assert "--epochs" not in str(info.value)
    # a config file (a user's own profile) that still sets an old key
    profile = tmp_path / "my_profile.json"
    profile.write_text(json.dumps({"max_images": 10, "epochs": 2}))
    with pytest.raises(ValueError, match=r"Renamed config key\(s\) in the config files: max_images: renamed "
                                         r"max_cases .* rename the key in your config file"):
        rb.check_command_line(["run", "--config_file", ",".join([*configs, str(profile)])])  # MONAI's "a,b" form
    rb.check_command_line(["run", "--config_file", ",".join(configs)])  # nothing renamed, no override: runs
    # the experiment tool's --override: refused before any stage runs
    with pytest.raises(experiment.ExperimentError, match="--max_val_images: renamed --max_val_cases"):
        experiment.Experiment(str(CEPH), "quick", None, str(tmp_path / "runs"), {"max_val_images": 1})
    # a config of someone else that uses the old word for a thing of its own (no new key) is left alone
    assert rb.renamed_key_errors({"max_images": 3}, ["max_images"]) == []
    # segmentation's "slices" became "samples" as in the other bundles: a path below it names the new path
    assert rb.renamed_key_errors({"samples": {}}, ["slices#channels"]) == [
        "--slices#channels: renamed --samples#channels (one vocabulary of keys across the bundles), so this override "
        "would be ignored; use --samples#channels"]


def test_a_bundle_run_names_the_new_key_on_its_last_line(tmp_path):
    proc = Bundle("bundles/cephalometric_xray_landmarks", {}).run(("train", "evaluate"), "--max_test_images", "3", "--output_root",
                                                   str(tmp_path), expect_ok=False)
    assert "renamed --max_test_cases" in last_error(proc)
    assert not (tmp_path / "models").exists()  # refused before any work


def test_eval_split_chooses_the_evaluated_landmark_images(tmp_path):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(CEPH / "configs" / c) for c in ("train.json", "evaluate.json")])
    parser.update({"output_root": str(tmp_path), "image_size": [32, 24], "max_test_cases": 2})
    test = [s["case"] for s in parser.get_parsed_content("test#datalist")]
    validation = [s["case"] for s in parser.get_parsed_content("validate#datalist")]
    parser.update({"eval_split": "validation"})
    assert [s["case"] for s in parser.get_parsed_content("test#datalist", lazy=False)] == validation[:2]
    assert len(test) == 2 and not set(test) & set(validation)
