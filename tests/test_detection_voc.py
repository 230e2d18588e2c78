"""Pascal VOC folders -> detection datalists: robust_bundles.data.voc (no torchvision needed)."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from robust_bundles.data import voc

#: ROBUST_BUNDLES_SHARED_DATA names the shared data folder when the repository is not beside it (a git worktree)
REAL_BCCD = Path(os.environ.get("ROBUST_BUNDLES_SHARED_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data")) / "bccd"


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    """A 20-image synthetic VOC folder (2 images without objects), shared by the read-only tests."""
    return voc.write_synthetic_voc(
        tmp_path_factory.mktemp("voc") / "SYN", num_images=20, image_size=(48, 40), empty_images=2, seed=5
    )


@pytest.fixture
def small(tmp_path, synthetic) -> Path:
    """A copy of the synthetic folder that a test may break."""
    return Path(shutil.copytree(synthetic, tmp_path / "SMALL"))


def _add_object(xml: Path, name: str, box: tuple[float, float, float, float]) -> None:
    text = xml.read_text()
    obj = (
        f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{box[0]}</xmin><ymin>{box[1]}</ymin>"
        f"<xmax>{box[2]}</xmax><ymax>{box[3]}</ymax></bndbox></object>"
    )
    xml.write_text(text.replace("</annotation>", obj + "</annotation>"))


# ----------------------------------------------------------------------------------------------------------------------
# the synthetic generator and the reader
# ----------------------------------------------------------------------------------------------------------------------


def test_synthetic_layout_and_determinism(synthetic, tmp_path):
    assert sorted(p.name for p in synthetic.iterdir()) == [
        "Annotations", "ImageSets", "JPEGImages", "synthetic.json"
    ]
    assert len(list((synthetic / "JPEGImages").glob("*.jpg"))) == 20
    train, val = voc.read_image_set(synthetic, "train"), voc.read_image_set(synthetic, "val")
    assert (len(train), len(val)) == (15, 5)
    assert sorted(train + val) == voc.read_image_set(synthetic, "trainval")
    again = voc.write_synthetic_voc(tmp_path / "AGAIN", num_images=20, image_size=(48, 40), empty_images=2, seed=5)
    for name in ("synthetic_0003.xml", "synthetic_0017.xml"):
        assert (again / "Annotations" / name).read_text() == (synthetic / "Annotations" / name).read_text()
    # a complete folder is not rewritten
    stamp = (again / "JPEGImages" / "synthetic_0000.jpg").stat().st_mtime_ns
    voc.write_synthetic_voc(tmp_path / "AGAIN", num_images=20, image_size=(48, 40), empty_images=2, seed=5)
    assert (again / "JPEGImages" / "synthetic_0000.jpg").stat().st_mtime_ns == stamp


def test_synthetic_refuses_a_real_folder(small):
    (small / voc._SYNTHETIC_MARKER).unlink()
    with pytest.raises(FileExistsError, match="did not write"):
        voc.write_synthetic_voc(small, num_images=20, image_size=(48, 40), empty_images=2, seed=5)


def test_read_items_boxes_labels_and_empty_images(synthetic):
    items = voc.read_voc_datalist(synthetic, "trainval")
    assert [it["name"] for it in items] == voc.read_image_set(synthetic, "trainval")
    for it in items:
        assert Path(it["image"]).is_absolute() and Path(it["image"]).is_file()
        assert it["boxes"].dtype == np.float32 and it["boxes"].shape == (len(it["labels"]), 4)
        assert it["labels"].dtype == np.int64 and it["difficult"].dtype == bool
        assert it["original_size"] == [48, 40]
        b = it["boxes"]
        assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
        assert (b[:, [0, 2]] <= 48).all() and (b[:, [1, 3]] <= 40).all() and (b >= 0).all()
        assert set(it["labels"].tolist()) <= {0, 1, 2}
    empty = [it for it in items if len(it["labels"]) == 0]
    assert [it["name"] for it in empty] == ["synthetic_0000", "synthetic_0001"]
    assert empty[0]["boxes"].shape == (0, 4)


def test_synthetic_rectangles_are_where_the_xml_says(synthetic):
    from PIL import Image

    item = voc.read_voc_datalist(synthetic, ["synthetic_0005"])[0]
    pixels = np.asarray(Image.open(item["image"]).convert("RGB"), dtype=float)  # (rows, columns, 3)
    background = np.median(pixels.reshape(-1, 3), axis=0)
    for (x0, y0, x1, y1), label in zip(item["boxes"].astype(int), item["labels"]):
        inside = pixels[y0 + 1 : y1 - 1, x0 + 1 : x1 - 1].reshape(-1, 3).mean(0)
        assert np.abs(inside - background).max() > 40, (label, inside, background)


def test_parse_exact_values(tmp_path):
    xml = tmp_path / "a.xml"
    xml.write_text(
        voc._voc_xml("a.jpg", 100, 80, [("WBC", [10, 20, 30, 45]), ("Platelets", [0, 0, 5, 6])])
        .replace("<difficult>0</difficult>", "<difficult>1</difficult>", 1)
    )
    ann = voc.parse_voc_annotation(xml)
    assert ann["size"] == (100, 80)
    np.testing.assert_array_equal(ann["boxes"], np.array([[10, 20, 30, 45], [0, 0, 5, 6]], dtype=np.float32))
    assert ann["labels"].tolist() == [1, 2] and ann["difficult"].tolist() == [True, False] and ann["dropped"] == 0


def test_zero_size_boxes_are_dropped_with_a_warning_naming_the_file(small, caplog):
    xml = small / "Annotations" / "synthetic_0004.xml"
    before = voc.parse_voc_annotation(xml)
    _add_object(xml, "RBC", (20, 30, 20, 30))  # BCCD's defect: xmin == xmax and ymin == ymax
    _add_object(xml, "WBC", (5, 9, 15, 9))  # zero height
    caplog.set_level(logging.WARNING, logger="robust_bundles.data.voc")
    item = voc.read_voc_datalist(small, ["synthetic_0004"])[0]
    np.testing.assert_array_equal(item["boxes"], before["boxes"])
    np.testing.assert_array_equal(item["labels"], before["labels"])
    dropped = [r.getMessage() for r in caplog.records if "dropped object" in r.getMessage()]
    assert len(dropped) == 2 and all("synthetic_0004.xml" in m for m in dropped)
    assert "RBC" in dropped[0] and "'20', '30', '20', '30'" in dropped[0]


def test_boxes_outside_the_image_are_clipped(small, caplog):
    xml = small / "Annotations" / "synthetic_0004.xml"
    n = len(voc.parse_voc_annotation(xml)["labels"])
    _add_object(xml, "RBC", (-3, 30, 12, 45))
    caplog.set_level(logging.WARNING, logger="robust_bundles.data.voc")
    ann = voc.parse_voc_annotation(xml)
    np.testing.assert_array_equal(ann["boxes"][n], [0, 30, 12, 40])
    assert any("clipped" in r.getMessage() and "synthetic_0004.xml" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "breakage, error, match",
    [
        ("missing_image", FileNotFoundError, r"synthetic_0006\.jpg is listed but missing"),
        ("missing_xml", FileNotFoundError, r"synthetic_0006\.xml is missing"),
        ("corrupt_xml", ValueError, r"synthetic_0006\.xml is not valid XML"),
        ("unknown_class", ValueError, r"synthetic_0006\.xml: object \d+ has class 'Neutrophil'"),
        ("bad_number", ValueError, r"synthetic_0006\.xml: .*<xmin>abc</xmin>, not a number"),
        ("wrong_size", ValueError, r"synthetic_0006\.jpg is 48 x 40 pixels but .*synthetic_0006\.xml says 50 x 40"),
        ("no_jpegimages", FileNotFoundError, r"missing JPEGImages"),
        ("duplicate", ValueError, r"lists 'synthetic_0006' twice"),
    ],
)
def test_clear_errors_name_the_file(small, breakage, error, match):
    xml, jpg = small / "Annotations" / "synthetic_0006.xml", small / "JPEGImages" / "synthetic_0006.jpg"
    if breakage == "missing_image":
        jpg.unlink()
    elif breakage == "missing_xml":
        xml.unlink()
    elif breakage == "corrupt_xml":
        xml.write_text(xml.read_text()[:50])
    elif breakage == "unknown_class":
        _add_object(xml, "Neutrophil", (1, 1, 5, 5))
    elif breakage == "bad_number":
        _add_object(xml, "RBC", ("abc", 1, 5, 5))
    elif breakage == "wrong_size":
        xml.write_text(xml.read_text().replace("<width>48</width>", "<width>50</width>"))
    elif breakage == "no_jpegimages":
        shutil.rmtree(small / "JPEGImages")
    elif breakage == "duplicate":
        path = small / "ImageSets" / "Main" / "trainval.txt"
        path.write_text(path.read_text() + "synthetic_0006\n")
    with pytest.raises(error, match=match):
        voc.read_voc_datalist(small, "trainval")


def test_find_voc_root_accepts_the_parent_folder(synthetic, tmp_path):
    assert voc.find_voc_root(synthetic) == synthetic
    assert voc.find_voc_root(synthetic.parent) == synthetic
    with pytest.raises(FileNotFoundError, match="does not exist"):
        voc.find_voc_root(tmp_path / "nowhere")


# ----------------------------------------------------------------------------------------------------------------------
# splits and sample ids
# ----------------------------------------------------------------------------------------------------------------------


def test_splits_are_disjoint_deterministic_and_keep_the_distributed_train_list(synthetic):
    s = voc.voc_splits(synthetic, seed=0)
    assert s["train"] == sorted(voc.read_image_set(synthetic, "train"))
    assert sorted(s["validation"] + s["test"]) == sorted(voc.read_image_set(synthetic, "val"))
    assert not set(s["validation"]) & set(s["test"])
    assert (len(s["validation"]), len(s["test"])) == (3, 2)  # test: round(0.5 * 5) = 2 (half to even)
    assert voc.voc_splits(synthetic, seed=0) == s
    tests = {tuple(voc.voc_splits(synthetic, seed=k)["test"]) for k in range(8)}
    assert len(tests) > 1  # the seed matters


def test_split_refuses_overlapping_lists(small):
    train = small / "ImageSets" / "Main" / "train.txt"
    val_name = voc.read_image_set(small, "val")[0]
    train.write_text(train.read_text() + val_name + "\n")
    with pytest.raises(ValueError, match="in both train.txt and val.txt"):
        voc.voc_splits(small)


def test_load_voc_assigns_stable_ids_per_split(synthetic):
    train = voc.load_voc(synthetic, "train")
    assert [it["sample_id"] for it in train] == list(range(len(train)))
    assert [it["name"] for it in train] == sorted(it["name"] for it in train)
    # ids depend only on the set of names
    again = voc.load_voc(synthetic, "train")
    assert [(it["name"], it["sample_id"]) for it in again] == [(it["name"], it["sample_id"]) for it in train]
    assert [it["name"] for it in voc.load_voc(synthetic, "train", max_cases=4)] == [it["name"] for it in train[:4]]
    assert len(voc.load_voc(synthetic, "all")) == 20
    with pytest.raises(ValueError, match="Unknown split"):
        voc.load_voc(synthetic, "training")



def test_synthetic_default_is_marked_and_announced(tmp_path, caplog):
    from robust_bundles.data.synthetic import is_synthetic

    with caplog.at_level(logging.WARNING):
        out = voc.synthetic_default(tmp_path / "syn")
    assert out == str(tmp_path / "syn") and is_synthetic(out) and "SYNTHETIC DATA" in caplog.text
    sizes = {split: len(voc.load_voc(out, split)) for split in voc.SPLITS}
    assert sizes == {"train": 24, "validation": 8, "test": 8}


def test_voc_digest_depends_on_the_image_names_only(synthetic):
    train = voc.load_voc(synthetic, "train")
    assert voc.voc_digest(train) == voc.voc_digest(list(reversed(train)))
    assert voc.voc_digest(train) != voc.voc_digest(train[1:])


# ----------------------------------------------------------------------------------------------------------------------
# the real BCCD folder
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.realdata
@pytest.mark.skipif(not REAL_BCCD.is_dir(), reason=f"real BCCD data not present at {REAL_BCCD}")
def test_real_bccd(caplog):
    caplog.set_level(logging.WARNING, logger="robust_bundles.data.voc")
    items = voc.read_voc_datalist(REAL_BCCD, "trainval")
    assert len(items) == 292
    dropped = sorted(r.getMessage().split(":")[0] for r in caplog.records if "dropped object" in r.getMessage())
    assert dropped == ["BloodImage_00338.xml", "BloodImage_00343.xml"]
    counts = np.bincount(np.concatenate([it["labels"] for it in items]), minlength=3)
    assert counts.tolist() == [3350 - 2, 301, 292]  # RBC, WBC, Platelets; the two zero-size RBC boxes dropped
    for it in items:
        assert it["original_size"] == [640, 480]
        b = it["boxes"]
        assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
        assert (b[:, [0, 2]] <= 640).all() and (b[:, [1, 3]] <= 480).all()
    splits = {s: voc.load_voc(REAL_BCCD, s) for s in voc.SPLITS}
    assert {s: len(v) for s, v in splits.items()} == {"train": 205, "validation": 43, "test": 44}
    names = [set(it["name"] for it in v) for v in splits.values()]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
