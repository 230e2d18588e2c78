"""robust_bundles.data.ceph: both ISBI 2015 layouts, the doctors' average, the paper's split, images, errors, and the
real copy at ../shared/data/isbi2015_ceph (skipped when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from robust_bundles.data import ceph

#: ../shared/data beside the repository, or the folder named by ROBUST_BUNDLES_SHARED_DATA (e.g. for a git worktree)
SHARED = Path(os.environ.get("ROBUST_BUNDLES_SHARED_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))
REAL = SHARED / "isbi2015_ceph"


def _official(root: Path, cases: dict[str, str], size=(30, 20), num_landmarks: int = 3) -> Path:
    """A tiny official layout: BMP images in their set folders, senior and junior annotations (junior = senior + 2)."""
    folders = {"train": "TrainingData", "test1": "Test1Data", "test2": "Test2Data"}
    for k, (case, set_name) in enumerate(cases.items()):
        image = root / "RawImage" / folders[set_name] / f"{case}.bmp"
        image.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full(size, 10 * k, np.uint8)).save(image)
        for doctor, shift in (("senior", 0), ("junior", 2)):
            txt = root / "AnnotationsByMD" / f"400_{doctor}" / f"{case}.txt"
            txt.parent.mkdir(parents=True, exist_ok=True)
            lines = [f"{j + 1 + shift},{2 * j + 1 + shift}" for j in range(num_landmarks)]
            txt.write_text("\n".join(lines) + "\n3\n1\n")  # classification lines after the landmarks
    return root


def test_official_layout_averages_the_two_doctors(tmp_path):
    root = _official(tmp_path / "ISBI", {"001": "train", "002": "train", "151": "test1", "152": "test1",
                                         "153": "test1", "301": "test2"})
    assert ceph.detect_layout(root) == "official"
    items = ceph.read_ceph_datalist(root, num_landmarks=3)
    assert [i["case"] for i in items] == ["001", "002", "151", "152", "153", "301"]
    assert [i["set"] for i in items] == ["train", "train", "test1", "test1", "test1", "test2"]
    assert items[0]["annotators"] == ["senior", "junior"]
    # senior (1, 1), (2, 3), (3, 5); junior +2: the mean is +1
    np.testing.assert_allclose(items[0]["landmarks"], [[2, 2], [3, 4], [4, 6]])
    senior = ceph.read_ceph_datalist(root, num_landmarks=3, annotators=["senior"])
    np.testing.assert_allclose(senior[0]["landmarks"], [[1, 1], [2, 3], [3, 5]])

    splits = ceph.split_ceph(items, validation_fraction=1 / 3, seed=0)
    assert [i["case"] for i in splits["train"]] == ["001", "002"]
    assert len(splits["validation"]) == 1 and len(splits["test"]) == 2 and splits["test2"][0]["case"] == "301"
    test1 = {i["case"] for i in splits["validation"] + splits["test"]}
    assert test1 == {"151", "152", "153"}
    assert ceph.split_ceph(list(reversed(items)), 1 / 3, 0) == splits  # the input order does not matter

    samples = ceph.load_ceph(root, "train", image_size=(15, 10), num_landmarks=3, pixel_spacing=0.1)
    s = samples[1]
    assert s["image"].shape == (1, 15, 10) and s["image"].dtype == np.float32
    assert s["image"].max() == pytest.approx(10 / 255)  # the second image is grey level 10
    assert s["orig_size"].tolist() == [30, 20] and s["spacing"].tolist() == pytest.approx([0.1, 0.1])
    assert [x["sample_id"] for x in samples] == [0, 1] and s["case"] == "002"
    assert ceph.ceph_digest(samples) == ceph.ceph_digest(list(reversed(samples)))


def test_csv_layout_like_the_shared_copy(tmp_path):
    root = tmp_path / "isbi2015_ceph"
    (root / "cepha400").mkdir(parents=True)
    header = "image_path," + ",".join(f"{j}_x,{j}_y" for j in range(1, 4))
    rows = {"train_senior.csv": ["002.jpg,5,6,7,8,9,10", "001.jpg,1,2,3,4,5,6"],
            "test1_senior.csv": ["151.jpg,2,2,2,2,2,2", "152.jpg,3,3,3,3,3,3"]}
    for name, lines in rows.items():
        (root / name).write_text(header + "\n" + "\n".join(lines) + "\n")
        for line in lines:
            Image.fromarray(np.zeros((30, 20), np.uint8)).convert("RGB").save(root / "cepha400" / line.split(",")[0])
    assert ceph.detect_layout(root) == "csv"
    items = ceph.read_ceph_datalist(root, num_landmarks=3)
    assert [(i["case"], i["set"]) for i in items] == [("001", "train"), ("002", "train"), ("151", "test1"),
                                                       ("152", "test1")]
    np.testing.assert_allclose(items[1]["landmarks"], [[5, 6], [7, 8], [9, 10]])
    assert items[0]["annotators"] == ["senior"]
    samples = ceph.load_ceph(root, "test", image_size=(15, 10), num_landmarks=3)
    assert len(samples) == 1 and samples[0]["orig_size"].tolist() == [30, 20]


def test_errors_name_the_file_and_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ceph.detect_layout(tmp_path / "nowhere")
    parent = tmp_path / "download"
    _official(parent / "ISBI", {"001": "train"}, num_landmarks=3)
    with pytest.raises(FileNotFoundError, match=f"did you mean {parent / 'ISBI'}"):
        ceph.read_ceph_datalist(parent)
    root = _official(tmp_path / "broken", {"001": "train", "002": "train"}, num_landmarks=3)
    (root / "AnnotationsByMD" / "400_junior" / "002.txt").unlink()
    with pytest.raises(FileNotFoundError, match="400_junior/002.txt does not exist"):
        ceph.read_ceph_datalist(root, num_landmarks=3)
    (root / "AnnotationsByMD" / "400_junior" / "002.txt").write_text("1,2\nfoo\n")
    with pytest.raises(ValueError, match="002.txt line 2 is 'foo'"):
        ceph.read_ceph_datalist(root, num_landmarks=3)
    (root / "AnnotationsByMD" / "400_junior" / "002.txt").write_text("1,2\n3,4\n5,90\n")  # y = 90 > 30 pixels
    with pytest.raises(ValueError, match="Landmarks \\[3\\] of image .*002.bmp lie outside the image"):
        ceph.load_ceph(root, "train", image_size=(15, 10), num_landmarks=3)
    (root / "RawImage" / "TrainingData" / "001.bmp").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="001.bmp cannot be read"):
        ceph.read_xray(root / "RawImage" / "TrainingData" / "001.bmp", (15, 10))
    csv_root = tmp_path / "csv"
    csv_root.mkdir()
    (csv_root / "train_senior.csv").write_text("image_path,1_x,1_y\nmissing.jpg,1,2\n")
    with pytest.raises(FileNotFoundError, match="lists the image 'missing.jpg'"):
        ceph.read_ceph_datalist(csv_root, num_landmarks=1)
    with pytest.raises(ValueError, match="lacks the columns"):
        ceph.read_ceph_datalist(csv_root, num_landmarks=2)


@pytest.mark.parametrize("layout", ["official", "csv"])
def test_synthetic_dataset_both_layouts(tmp_path, layout):
    root = ceph.write_synthetic_ceph(tmp_path / layout, num_train=3, num_test1=3, layout=layout, size=(60, 48))
    assert ceph.detect_layout(root) == layout
    items = ceph.read_ceph_datalist(root)
    assert len(items) == 6 and all(i["landmarks"].shape == (19, 2) for i in items)
    assert items[0]["annotators"] == (["senior", "junior"] if layout == "official" else ["senior"])
    samples = ceph.load_ceph(root, "validation", image_size=(30, 24))
    assert len(samples) == 1 and samples[0]["orig_size"].tolist() == [60, 48]
    mtime = (root / "synthetic.json").stat().st_mtime_ns
    ceph.write_synthetic_ceph(tmp_path / layout, num_train=3, num_test1=3, layout=layout, size=(60, 48))
    assert (root / "synthetic.json").stat().st_mtime_ns == mtime  # complete: not rewritten
    with pytest.raises(FileExistsError, match="refusing to overwrite a real dataset"):
        real = tmp_path / "real"
        real.mkdir()
        (real / "train_senior.csv").write_text("x")
        ceph.write_synthetic_ceph(real)


def test_inference_datalist_and_loader(tmp_path):
    Image.fromarray(np.tile(np.array([[0], [255]], np.uint8), (20, 30))).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((40, 30, 3), np.uint8)).save(tmp_path / "b.jpg")
    (tmp_path / "notes.txt").write_text("x")
    items = ceph.xray_datalist(tmp_path)
    assert [Path(i["image"]).name for i in items] == ["a.png", "b.jpg"]
    d = ceph.LoadXrayd(image_size=(20, 15), pixel_spacing=[0.1, 0.2])(items[0])
    assert d["image"].shape == (1, 20, 15) and d["image"].max() > 0.4
    assert d["orig_size"].tolist() == [40, 30] and d["image_path"] == items[0]["image"]
    # a blank image (here all zero) is not an X-ray: refused, naming the file
    with pytest.raises(ValueError, match=r"b\.jpg holds one value everywhere \(0 in each channel\)"):
        ceph.LoadXrayd(image_size=(20, 15))(items[1])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no image"):
        ceph.xray_datalist(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="does not exist: fix the path"):
        ceph.xray_datalist([str(tmp_path / "missing.bmp")])


@pytest.mark.realdata
@pytest.mark.skipif(not (REAL / "train_senior.csv").is_file(),
                    reason=f"the ISBI 2015 data is not at {REAL} (../shared/data/isbi2015_ceph beside the repo)")
def test_real_isbi2015_copy():
    items = ceph.read_ceph_datalist(REAL)
    assert len(items) == 300
    assert [i["case"] for i in items] == [f"{n:03d}" for n in range(1, 301)]
    assert {i["set"] for i in items[:150]} == {"train"} and {i["set"] for i in items[150:]} == {"test1"}
    splits = ceph.split_ceph(items)
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [150, 50, 100]
    for item in items:
        assert item["landmarks"].shape == (19, 2)
        with Image.open(item["image"]) as im:  # the header only
            w, h = im.size
        x, y = item["landmarks"][:, 0], item["landmarks"][:, 1]
        assert (x >= 0).all() and (x <= w - 1).all() and (y >= 0).all() and (y <= h - 1).all(), item["case"]
    assert (w, h) == (1935, 2400)
    sample = ceph.load_ceph(REAL, "test", max_cases=1)[0]
    assert sample["image"].shape == (1, 200, 160) and 0 <= sample["image"].min() < sample["image"].max() <= 1


def test_synthetic_dataset_with_other_settings_replaces_the_old_one(tmp_path):
    root = ceph.write_synthetic_ceph(tmp_path / "s", num_train=3, num_test1=2, size=(60, 48))
    ceph.write_synthetic_ceph(tmp_path / "s", num_train=2, num_test1=2, size=(60, 48))
    assert len(ceph.read_ceph_datalist(root)) == 4  # no stale image of the first set
    assert ceph.synthetic_default(tmp_path / "s", num_train=2, num_test1=2, size=(60, 48)) == str(root)
    from robust_bundles.data.synthetic import is_synthetic

    assert is_synthetic(root)


# ----------------------------------------------------------------------------------------------------------------------
# deeper images: 16-bit, 32-bit integer and float X-rays read at their full range
# ----------------------------------------------------------------------------------------------------------------------


def _synthetic_xray(tmp_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The first Test1 image of the bundle's synthetic dataset (uint8 (480, 387)) and its landmarks (19, 2) px."""
    root = ceph.write_synthetic_ceph(tmp_path / "synthetic", num_train=1, num_test1=1)
    item = [i for i in ceph.read_ceph_datalist(root) if i["set"] == "test1"][0]
    with Image.open(item["image"]) as im:
        return np.asarray(im.convert("L")), item["landmarks"]


def _deep_copies(folder: Path, grey: np.ndarray) -> dict[str, Path]:
    """The 8-bit image as PNG and as the deeper files a clinic sends: 16-bit PNG and TIFF (value x 257, so that the full
    16-bit range is the 8-bit one), big-endian 16-bit TIFF, 12-bit values (x 16) in a 16-bit PNG, 32-bit integer and
    float TIFF."""
    folder.mkdir(exist_ok=True)
    files = {name: folder / name for name in ("8bit.png", "16bit.png", "16bit.tif", "16bit_big_endian.tif",
                                              "12bit.png", "int32.tif", "float.tif")}
    wide = grey.astype(np.uint16) * 257
    Image.fromarray(grey).save(files["8bit.png"])
    Image.fromarray(wide).save(files["16bit.png"])
    Image.fromarray(wide).save(files["16bit.tif"])
    Image.frombytes("I;16B", wide.shape[::-1], wide.astype(">u2").tobytes()).save(files["16bit_big_endian.tif"])
    Image.fromarray(grey.astype(np.uint16) * 16).save(files["12bit.png"])
    Image.fromarray(grey.astype(np.int32) * 257).save(files["int32.tif"])
    Image.fromarray(grey.astype(np.float32) / 255).save(files["float.tif"])
    return files


def test_grey_levels_scale_by_the_bit_depth():
    # hand-checked: largest value 255 -> 8 bits (/255); 256 needs 9 bits -> 10 (/1023); 4095 -> 12 (/4095);
    # 4096 -> 13 -> 14 (/16383); 65535 -> 16 (/65535); floats in [0, 1] stay as they are
    assert ceph.grey_levels(np.array([0, 51, 255], np.uint16)).tolist() == pytest.approx([0, 0.2, 1])
    assert ceph.grey_levels(np.array([0, 256], np.uint16)).tolist() == pytest.approx([0, 256 / 1023])
    assert ceph.grey_levels(np.array([4095], np.uint16)).tolist() == pytest.approx([1.0])
    assert ceph.grey_levels(np.array([4096], np.int32)).tolist() == pytest.approx([4096 / 16383])
    assert ceph.grey_levels(np.array([257 * 51, 65535], np.uint16)).tolist() == pytest.approx([0.2, 1.0])
    assert ceph.grey_levels(np.array([0.25, 0.5], np.float32)).tolist() == [0.25, 0.5]
    assert ceph.grey_levels(np.array([0.0, 1000.0], np.float32)).tolist() == pytest.approx([0, 1000 / 1023])
    with pytest.raises(ValueError, match="x.tif has negative grey levels"):
        ceph.grey_levels(np.array([-1.0, 2.0], np.float32), "x.tif")
    with pytest.raises(ValueError, match="x.tif has 1 non-finite"):
        ceph.grey_levels(np.array([np.nan, 2.0], np.float32), "x.tif")


def test_sixteen_bit_and_float_xrays_read_as_the_eight_bit_image(tmp_path):
    grey, _ = _synthetic_xray(tmp_path)
    files = _deep_copies(tmp_path / "in", grey)
    with Image.open(files["16bit.png"]) as im16, Image.open(files["16bit_big_endian.tif"]) as imb:
        assert (im16.mode, imb.mode) == ("I;16", "I;16B")  # the files are really 16-bit
    eight, orig = ceph.read_xray(files["8bit.png"])
    eight_small, _ = ceph.read_xray(files["8bit.png"], (200, 160))
    for name in ("16bit.png", "16bit.tif", "16bit_big_endian.tif", "int32.tif", "float.tif"):
        full, size = ceph.read_xray(files[name])
        assert size == orig and np.abs(full - eight).max() < 1e-6, name
        small, _ = ceph.read_xray(files[name], (200, 160))
        assert np.abs(small - eight_small).max() <= 1 / 255, name  # the 8-bit resize rounds to 8 bits
    twelve, _ = ceph.read_xray(files["12bit.png"])  # 12-bit values: divided by 4095, not by 65535 (nearly black)
    np.testing.assert_allclose(twelve, grey.astype(np.float64) * 16 / 4095, atol=1e-6)


def test_sixteen_bit_landmarks_equal_the_eight_bit_ones_with_the_shipped_model(tmp_path):
    """Through the reader and the decoder of the bundle's inference, with the shipped weights: the landmark errors of
    the 16-bit PNG and TIFF equal the 8-bit image's within 0.5 mm (on main the 16-bit images were clipped to white)."""
    import torch
    from monai.networks.nets import BasicUNet

    from robust_bundles.tasks.landmarks import predict_landmarks

    model = Path(__file__).resolve().parents[1] / "bundles" / "cephalometric_xray_landmarks" / "models" / "model.pt"
    net = BasicUNet(2, 1, 57, features=(8, 8, 16, 32, 64, 16))
    net.load_state_dict(torch.load(model, map_location="cpu", weights_only=True))
    net.eval()
    grey, truth = _synthetic_xray(tmp_path)
    files = _deep_copies(tmp_path / "in", grey)
    errors = {}
    for name in ("8bit.png", "16bit.png", "16bit.tif"):
        item = ceph.LoadXrayd(image_size=(200, 160))({"image": str(files[name])})
        with torch.no_grad():
            points = predict_landmarks(net(torch.from_numpy(item["image"])[None]), torch.tensor([item["orig_size"]]),
                                       19, 12.0)[0].numpy()
        errors[name] = np.linalg.norm((points - truth) * ceph.PIXEL_SPACING_MM, axis=1)
    for name in ("16bit.png", "16bit.tif"):
        assert np.abs(errors[name] - errors["8bit.png"]).max() <= 0.5, (name, errors[name] - errors["8bit.png"])


def test_an_image_mode_the_reader_does_not_know_is_refused(tmp_path):
    Image.new("LAB", (30, 40), (50, 0, 0)).save(tmp_path / "lab.tif")
    with Image.open(tmp_path / "lab.tif") as im:
        assert im.mode == "LAB"
    with pytest.raises(ValueError, match=r"lab\.tif has the PIL mode 'LAB', which this reader does not know.*save it as"):
        ceph.read_xray(tmp_path / "lab.tif")
