"""Every bundle's metadata.json against the repository schema (the MONAI bundle specification's mandatory fields plus
the nine the model-zoo expects), and what JSON Schema cannot express."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

REPO = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((REPO / "bundles" / "meta_schema.json").read_text())
BUNDLES = sorted(p.parent.parent for p in (REPO / "bundles").glob("*/configs/metadata.json"))
MODEL_ZOO_FIELDS = ["name", "data_source", "data_type", "image_classes", "label_classes", "pred_classes",
                    "intended_use", "references", "eval_metrics"]


def test_schema_requires_the_model_zoo_fields():
    assert set(MODEL_ZOO_FIELDS) <= set(SCHEMA["required"])


@pytest.mark.parametrize("bundle", BUNDLES, ids=[b.name for b in BUNDLES])
def test_metadata_is_complete(bundle):
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    jsonschema.validate(meta, SCHEMA)
    assert meta["name"] == bundle.name
    assert meta["version"] in meta["changelog"]
    for field in SCHEMA["required"]:  # each required field, deleted, makes the file invalid
        with pytest.raises(jsonschema.ValidationError, match=f"'{field}' is a required property"):
            jsonschema.validate({k: v for k, v in meta.items() if k != field}, SCHEMA)
    assert "optional_packages_version" not in meta  # deprecated by MONAI
    assert "robust-bundles" not in meta["required_packages_version"]  # not on any index: zips carry the library
    assert meta["eval_metrics"], "eval_metrics must describe the shipped model"
