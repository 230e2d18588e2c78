"""Stable sample ids: robust_bundles.transforms.assign_sample_ids and SampleIdd."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from monai.data import CacheDataset, DataLoader
from monai.transforms import Compose, RandFlipd

from robust_bundles.transforms import SampleIdd, assign_sample_ids, datalist_digest


def _code(case: str, slice_index: int) -> float:
    """The value written into every pixel of a sample's image: it encodes the sample's key."""
    return int(case.split("_")[1]) * 100 + slice_index


def _datalist(num_cases: int = 4, num_slices: int = 5) -> list[dict]:
    return [
        {"case": f"case_{c:03d}", "slice": s, "image": np.full((1, 4, 4), _code(f"case_{c:03d}", s), np.float32)}
        for c in range(num_cases)
        for s in range(num_slices)
    ]


def _id_map(datalist: list[dict]) -> dict[tuple[str, int], int]:
    return {(item["case"], item["slice"]): item["sample_id"] for item in datalist}


def test_ids_are_0_to_n_minus_1_in_key_order():
    items, digest = assign_sample_ids(_datalist(3, 12))
    assert sorted(item["sample_id"] for item in items) == list(range(36))
    # integers sort numerically (slice 10 after slice 9), not as strings
    ids = _id_map(items)
    assert ids[("case_000", 9)] + 1 == ids[("case_000", 10)]
    assert ids[("case_000", 11)] + 1 == ids[("case_001", 0)]
    assert len(digest) == 64 and int(digest, 16) >= 0


def test_ids_do_not_depend_on_list_order():
    reference, digest = assign_sample_ids(_datalist())
    shuffled = _datalist()
    random.Random(1).shuffle(shuffled)
    original_order = [(item["case"], item["slice"]) for item in shuffled]
    result, shuffled_digest = assign_sample_ids(shuffled)
    assert [(item["case"], item["slice"]) for item in result] == original_order  # list order kept
    assert _id_map(result) == _id_map(reference)
    assert shuffled_digest == digest


def test_digest_changes_when_a_sample_is_added_or_changed():
    _, digest = assign_sample_ids(_datalist())
    larger = _datalist() + [{"case": "case_099", "slice": 0}]
    assert assign_sample_ids(larger)[1] != digest
    renamed = _datalist()
    renamed[0]["case"] = "case_050"
    assert assign_sample_ids(renamed)[1] != digest
    assert datalist_digest(_datalist()) == digest


def test_duplicate_key_is_named():
    items = _datalist(2, 2) + [{"case": "case_001", "slice": 1}]
    with pytest.raises(ValueError, match=r"case='case_001', slice=1"):
        assign_sample_ids(items)
    assert all("sample_id" not in item for item in items)  # nothing written before the check


def test_missing_key_field_names_field_and_index():
    items = _datalist(1, 3)
    del items[2]["slice"]
    with pytest.raises(ValueError, match=r"Item 2 has no key field 'slice'"):
        assign_sample_ids(items)


def test_custom_key_fields_and_id_key():
    items = [{"name": n} for n in ("b", "a", "c")]
    result, _ = assign_sample_ids(items, key_fields=("name",), id_key="idx")
    assert [item["idx"] for item in result] == [1, 0, 2]


def test_sample_idd_makes_int64_scalar():
    out = SampleIdd()({"sample_id": np.int32(7), "image": np.zeros((1, 2, 2))})
    assert isinstance(out["sample_id"], torch.Tensor)
    assert out["sample_id"].dtype == torch.int64 and out["sample_id"].shape == () and out["sample_id"].item() == 7


def test_sample_idd_missing_id_says_how_to_fix():
    with pytest.raises(KeyError, match=r"sample 'case case_003, slice 4' has no 'sample_id': assign ids with "
                                       r"robust_bundles.transforms.assign_sample_ids"):
        SampleIdd()({"case": "case_003", "slice": 4, "image": np.zeros((1, 2, 2))})


@pytest.mark.parametrize("bad", [1.5, -1, "3", np.array([1, 2])])
def test_sample_idd_rejects_non_ids(bad):
    with pytest.raises(ValueError, match="sample_id"):
        SampleIdd()({"case": "case_000", "slice": 0, "sample_id": bad})


def test_ids_survive_cache_dataset_shuffling_and_workers():
    items, _ = assign_sample_ids(_datalist(4, 6))
    random.Random(0).shuffle(items)
    expected = {item["sample_id"]: (item["case"], item["slice"]) for item in items}
    transform = Compose([SampleIdd(), RandFlipd(keys="image", prob=0.5, spatial_axis=0)])
    dataset = CacheDataset(items, transform=transform, cache_rate=1.0, num_workers=0, progress=False)
    loader = DataLoader(dataset, batch_size=5, shuffle=True, num_workers=2)
    seen = []
    for _ in range(2):  # two epochs: a different order, the same id -> sample mapping
        for batch in loader:
            ids = batch["sample_id"]
            assert ids.dtype == torch.int64 and ids.ndim == 1
            for j, sample_id in enumerate(ids.tolist()):
                case, slice_index = expected[sample_id]
                assert batch["case"][j] == case and int(batch["slice"][j]) == slice_index
                assert torch.all(batch["image"][j] == _code(case, slice_index))
                seen.append(sample_id)
    assert sorted(seen) == sorted(list(range(24)) * 2)
