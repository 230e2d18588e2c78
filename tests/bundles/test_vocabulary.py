"""One vocabulary of keys across the five bundles, as far as the experiment and study tools pass keys: every bundle
has ``max_cases``, ``max_val_cases``, ``eval_split`` and ``max_test_cases``; the former landmark/BCCD words
are gone from every config; ``eval_split`` chooses the evaluated split of the landmark bundle."""

from __future__ import annotations

import json

import pytest
from bundle_run import REPO

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
    for old in ("max_images", "max_val_images", "max_test_images", "slices", "slice_preprocessing"):  # profiles too
        for path in (bundle / "configs").rglob("*.json"):
            assert f'"{old}"' not in path.read_text() and f"@{old})" not in path.read_text(), (path, old)


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
