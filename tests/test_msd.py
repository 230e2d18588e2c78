"""MSD folders -> 2D slice samples: robust_bundles.data (msd, splits, nifti, synthetic_msd, archives)."""

from __future__ import annotations

import io
import json
import logging
import os
import tarfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from robust_bundles.data import archives, msd, nifti, splits, synthetic_msd
from robust_bundles.transforms import assign_sample_ids

REAL_HIPPOCAMPUS = Path(os.environ.get("ROBUST_BUNDLES_SHARED_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data")) / "msd_hippocampus"


# ----------------------------------------------------------------------------------------------------------------------
# fixtures
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    """A 10-case synthetic MSD folder, shared by the read-only tests of this module."""
    return synthetic_msd.write_synthetic_msd(tmp_path_factory.mktemp("msd") / "Task99_Synthetic", num_cases=10, seed=3)


@pytest.fixture
def small(tmp_path) -> Path:
    """A tiny 3-case MSD folder that a test may break."""
    return synthetic_msd.write_synthetic_msd(tmp_path / "Task98_Small", num_cases=3, shape=(12, 14, 10), seed=1)


def _save(array: np.ndarray, path: Path, affine: np.ndarray | None = None) -> None:
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))


def _first_case(folder: Path) -> str:
    return msd.read_msd_datalist(folder)[0]["case"]


def _first_pair(folder: Path) -> tuple[Path, Path]:
    item = msd.read_msd_datalist(folder)[0]
    return Path(item["image"]), Path(item["label"])


# ----------------------------------------------------------------------------------------------------------------------
# reading, splitting, slicing
# ----------------------------------------------------------------------------------------------------------------------


def test_read_msd_datalist(synthetic):
    datalist = msd.read_msd_datalist(synthetic)
    assert [item["case"] for item in datalist] == [f"synthetichippocampus_{i:03d}" for i in range(1, 11)]
    for item in datalist:
        assert Path(item["image"]).is_absolute() and Path(item["image"]).is_file()
        assert Path(item["label"]).parent.name == "labelsTr" and Path(item["label"]).is_file()
        assert Path(item["image"]).name == f"{item['case']}.nii.gz"


def test_read_msd_datalist_skips_appledouble_entries(small):
    meta = json.loads((small / "dataset.json").read_text())
    meta["training"].append({"image": "./imagesTr/._x.nii.gz", "label": "./labelsTr/._x.nii.gz"})
    (small / "dataset.json").write_text(json.dumps(meta))
    assert len(msd.read_msd_datalist(small)) == 3


def test_split_is_by_case_disjoint_complete_and_deterministic():
    cases = [f"case_{i:03d}" for i in range(40)]
    split = splits.split_cases(cases, (0.7, 0.1, 0.2), seed=0)
    assert set(split) == {"train", "validation", "test"}
    parts = [set(split[name]) for name in splits.SPLITS]
    assert sum(len(p) for p in parts) == 40 and set().union(*parts) == set(cases)
    assert [len(p) for p in parts] == [28, 4, 8]
    assert splits.split_cases(list(reversed(cases)), seed=0) == split  # order of the input does not matter
    assert splits.split_cases(cases, seed=0) == split
    assert splits.split_cases(cases, seed=1) != split


def test_split_counts_real_sized_dataset():
    split = splits.split_cases([f"c{i}" for i in range(208)])
    assert {k: len(v) for k, v in split.items()} == {"train": 146, "validation": 21, "test": 41}


def test_split_small_and_bad_inputs():
    three = splits.split_cases(["a", "b", "c"])
    assert all(len(three[name]) == 1 for name in splits.SPLITS)
    with pytest.raises(ValueError, match=r"Cannot split 2 case\(s\) into 3 non-empty splits"):
        splits.split_cases(["a", "b"])
    with pytest.raises(ValueError, match="must sum to 1"):
        splits.split_cases(["a", "b", "c"], (0.5, 0.1, 0.1))
    with pytest.raises(ValueError, match="more than once"):
        splits.split_cases(["a", "b", "c", "a"])
    assert splits.split_cases(["a", "b"], (0.5, 0.5, 0.0))["test"] == []


@pytest.mark.parametrize("slice_axis", [-1, 0])
def test_load_slices(synthetic, slice_axis, caplog):
    split = splits.split_cases([item["case"] for item in msd.read_msd_datalist(synthetic)])
    with caplog.at_level(logging.INFO, logger="robust_bundles.data.msd"):
        slices = msd.load_slices(synthetic, "train", slice_axis=slice_axis, expected_labels=(0, 1, 2))
    shape = (35, 50, 36)
    in_plane = tuple(s for axis, s in enumerate(shape) if axis != slice_axis % 3)
    assert len(slices) == len(split["train"]) * shape[slice_axis]  # every slice of every train case
    assert {s["case"] for s in slices} == set(split["train"])
    for sample in slices:
        assert sample["image"].shape == (1, *in_plane) and sample["image"].dtype == np.float32
        assert sample["label"].shape == (1, *in_plane) and sample["label"].dtype == np.uint8
        assert set(np.unique(sample["label"])) <= {0, 1, 2}
    ids = [s["sample_id"] for s in slices]
    assert sorted(ids) == list(range(len(slices)))
    # ids are the ones assign_sample_ids gives, and the digest matches
    copies = [{"case": s["case"], "slice": s["slice"]} for s in reversed(slices)]
    _, digest = assign_sample_ids(copies)
    assert [c["sample_id"] for c in reversed(copies)] == ids
    assert msd.slice_digest(slices) == digest == msd.slice_digest(list(reversed(slices)))
    # z-scored per volume: the slices of one case stack back into a volume with mean 0 and std 1
    for case in split["train"]:
        volume = np.concatenate([s["image"] for s in slices if s["case"] == case])
        assert abs(volume.mean()) < 1e-4 and abs(volume.std() - 1) < 1e-4
    n = len(slices)
    assert f"train split: {len(split['train'])} cases, {n} slices (ids 0..{n - 1})" in caplog.text


def test_load_slices_max_cases_and_case_override(synthetic):
    split = splits.split_cases([item["case"] for item in msd.read_msd_datalist(synthetic)])
    first = msd.load_slices(synthetic, "test", max_cases=1)
    assert {s["case"] for s in first} == {split["test"][0]} and len(first) == 36
    chosen = msd.load_slices(synthetic, cases=["synthetichippocampus_004", "synthetichippocampus_002"])
    assert [s["case"] for s in chosen[:1] + chosen[-1:]] == ["synthetichippocampus_002", "synthetichippocampus_004"]
    assert sorted(s["sample_id"] for s in chosen) == list(range(72))
    with pytest.raises(ValueError, match="not in .*dataset.json"):
        msd.load_slices(synthetic, cases=["nope"])
    with pytest.raises(ValueError, match="split='training'"):
        msd.load_slices(synthetic, "training")


def test_zscore():
    volume = np.random.default_rng(0).uniform(0, 255, size=(6, 7, 8)).astype(np.uint8)
    z = nifti.zscore(volume)
    assert z.dtype == np.float32 and z.shape == volume.shape
    assert abs(z.mean()) < 1e-5 and abs(z.std() - 1) < 1e-5
    assert np.all(nifti.zscore(np.full((3, 3, 3), 5.0)) == 0)


def test_split_summary_and_atomic_json(synthetic, tmp_path):
    path = msd.write_split_json(tmp_path / "out" / "split.json", synthetic, (0.6, 0.2, 0.2), seed=5)
    saved = json.loads(path.read_text())
    assert saved == json.loads(json.dumps(msd.split_summary(synthetic, (0.6, 0.2, 0.2), 5)))
    cases = [f"synthetichippocampus_{i:03d}" for i in range(1, 11)]
    assert saved["cases"] == splits.split_cases(cases, (0.6, 0.2, 0.2), 5)
    assert saved["num_cases"] == {"train": 6, "validation": 2, "test": 2}
    assert os.listdir(path.parent) == ["split.json"]  # no temporary file left behind


# ----------------------------------------------------------------------------------------------------------------------
# synthetic data
# ----------------------------------------------------------------------------------------------------------------------


def test_synthetic_dataset_is_plausible_deterministic_and_idempotent(tmp_path):
    a = synthetic_msd.write_synthetic_msd(tmp_path / "a", num_cases=3, seed=7)
    b = synthetic_msd.write_synthetic_msd(tmp_path / "b", num_cases=3, seed=7)
    meta = json.loads((a / "dataset.json").read_text())
    brighter = []
    assert meta["numTraining"] == 3 and meta["labels"] == {"0": "background", "1": "anterior", "2": "posterior"}
    assert meta["modality"] == {"0": "MRI"} and meta["synthetic"]["seed"] == 7
    for item_a, item_b in zip(msd.read_msd_datalist(a), msd.read_msd_datalist(b)):
        image, label, affine = nifti.load_volume_pair(item_a["image"], item_a["label"], expected_labels=meta["labels"])
        image_b, label_b, _ = nifti.load_volume_pair(item_b["image"], item_b["label"])
        assert np.array_equal(image, image_b) and np.array_equal(label, label_b)
        assert image.shape == (35, 50, 36) and np.allclose(affine, np.eye(4))
        assert nib.load(item_a["image"]).get_data_dtype() == np.float32
        assert nib.load(item_a["label"]).get_data_dtype() == np.uint8
        z = nifti.zscore(image)
        fractions = [np.mean(label == k) for k in (1, 2)]
        assert all(0.003 < f < 0.08 for f in fractions)  # hippocampus-like: a few percent of the crop each
        means = [z[label == k].mean() for k in (0, 1, 2)]
        assert means[0] < min(means[1:])
        brighter.append(means[2] - means[1])  # posterior brighter on average (a bias field may swap one case)
        # not thresholdable: part of the background is as bright as the darker foreground class
        assert np.mean(z[label == 0] > np.percentile(z[label == 1], 25)) > 0.001
    assert np.mean(brighter) > 0
    stamp = (a / "dataset.json").stat().st_mtime_ns
    image_stamp = Path(msd.read_msd_datalist(a)[0]["image"]).stat().st_mtime_ns
    time.sleep(0.01)
    assert synthetic_msd.write_synthetic_msd(tmp_path / "a", num_cases=3, seed=7) == a
    assert (a / "dataset.json").stat().st_mtime_ns == stamp
    assert Path(msd.read_msd_datalist(a)[0]["image"]).stat().st_mtime_ns == image_stamp
    # other parameters: rewritten, stale cases removed
    synthetic_msd.write_synthetic_msd(tmp_path / "a", num_cases=2, seed=8, shape=(10, 11, 12), labels=("bg", "fg"))
    assert len(list((a / "imagesTr").glob("*.nii.gz"))) == 2
    _, label, _ = nifti.load_volume_pair(*_first_pair(a), expected_labels=(0, 1))
    assert label.shape == (10, 11, 12) and label.max() == 1


def test_synthetic_refuses_to_overwrite_a_real_dataset(tmp_path):
    (tmp_path / "dataset.json").write_text(json.dumps({"name": "Real", "training": []}))
    with pytest.raises(FileExistsError, match="refusing to overwrite a real dataset"):
        synthetic_msd.write_synthetic_msd(tmp_path)


# ----------------------------------------------------------------------------------------------------------------------
# fetching
# ----------------------------------------------------------------------------------------------------------------------


def _tar_of(folder: Path, path: Path, arcname: str) -> Path:
    with tarfile.open(path, "w:gz" if path.name.endswith(".gz") else "w") as tf:
        tf.add(folder, arcname=arcname)
    return path


def test_fetch_msd_from_folder_tar_path_and_file_url(small, tmp_path):
    assert archives.fetch_msd(small, tmp_path / "unused") == small
    archive = _tar_of(small, tmp_path / "Task98_Small.tar", "Task98_Small")
    from_path = archives.fetch_msd(archive, tmp_path / "root1")
    assert from_path == tmp_path / "root1" / "Task98_Small"
    assert len(msd.read_msd_datalist(from_path)) == 3
    assert [p.name for p in (tmp_path / "root1").iterdir()] == ["Task98_Small"]  # no temporary folder left
    gz = _tar_of(small, tmp_path / "Task98_Small.tar.gz", "Task98_Small")
    from_url = archives.fetch_msd(gz.as_uri(), tmp_path / "root2")
    assert (from_url / "dataset.json").is_file()
    assert archives.fetch_msd(gz.as_uri(), tmp_path / "root2") == from_url  # already extracted: reused


def test_fetch_msd_archive_without_top_folder(small, tmp_path):
    archive = _tar_of(small, tmp_path / "Flat.tar", ".")
    out = archives.fetch_msd(str(archive), tmp_path / "root")
    assert out == tmp_path / "root" / "Flat" and len(msd.read_msd_datalist(out)) == 3


def _add_bytes(tf: tarfile.TarFile, name: str, data: bytes = b"x", **attrs) -> None:
    """Add a member with raw TarInfo attributes, as a hand-made malicious archive would."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for key, value in attrs.items():
        setattr(info, key, value)
    tf.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize(
    "name, attrs, message",
    [
        ("Task/../../evil.txt", {}, "would be written outside"),
        ("/tmp/evil.txt", {}, "absolute path"),
        ("Task/link", {"type": tarfile.SYMTYPE, "linkname": "../../etc", "data": b""}, "links to"),
    ],
)
def test_fetch_msd_refuses_unsafe_members(small, tmp_path, name, attrs, message):
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tf:
        tf.add(small, arcname="Task")
        _add_bytes(tf, name, **attrs)
    root = tmp_path / "deep" / "root"
    with pytest.raises(ValueError, match=message):
        archives.fetch_msd(archive, root)
    assert not (tmp_path / "deep" / "evil.txt").exists() and not (tmp_path / "evil.txt").exists()
    assert not (root / "Task").exists()


def test_fetch_msd_bad_sources(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"does not exist: give an MSD task folder"):
        archives.fetch_msd(tmp_path / "Task04_Hippocampus.tar", tmp_path / "root")
    not_archive = tmp_path / "x.tar"
    not_archive.write_bytes(b"not an archive")
    with pytest.raises(ValueError, match="is not a tar or zip archive"):
        archives.fetch_msd(not_archive, tmp_path / "root")
    no_json = tmp_path / "nojson.tar"
    with tarfile.open(no_json, "w") as tf:
        _add_bytes(tf, "Task/imagesTr/a.nii.gz")
    with pytest.raises(ValueError, match="holds no dataset.json"):
        archives.fetch_msd(no_json, tmp_path / "root")


# ----------------------------------------------------------------------------------------------------------------------
# bad input: every message names the file and the fix
# ----------------------------------------------------------------------------------------------------------------------


def test_missing_label_file(small):
    _, label = _first_pair(small)
    label.unlink()
    with pytest.raises(FileNotFoundError, match=rf"labelsTr/{label.name} listed in dataset.json is missing.*"
                                                r"remove the case from .*dataset.json"):
        msd.read_msd_datalist(small)


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere does not exist: set dataset_dir"):
        msd.read_msd_datalist(tmp_path / "nowhere")


def test_parent_folder_suggests_task_folder(small):
    with pytest.raises(FileNotFoundError, match=rf"did you mean .*{small.name}\?"):
        msd.read_msd_datalist(small.parent)


def test_no_dataset_json(small):
    (small / "dataset.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"dataset.json does not exist, but .*imagesTr does: an MSD folder "
                                                r"needs a dataset.json.*Write one"):
        msd.read_msd_datalist(small)


def test_images_directly_in_folder(tmp_path):
    _save(np.zeros((4, 4, 4), np.float32), tmp_path / "case_001.nii.gz")
    with pytest.raises(FileNotFoundError, match=r"holds 1 NIfTI file\(s\) directly \(e.g. case_001.nii.gz\).*"
                                                r"Move the images to imagesTr/"):
        msd.read_msd_datalist(tmp_path)


def test_corrupt_or_incomplete_dataset_json(small):
    (small / "dataset.json").write_text('{"training": [')
    with pytest.raises(ValueError, match=r"dataset.json is not valid JSON .*fix the file"):
        msd.read_msd_datalist(small)
    (small / "dataset.json").write_text('{"name": "x"}')
    with pytest.raises(ValueError, match=r"dataset.json has no 'training' list: an MSD dataset.json lists"):
        msd.read_msd_datalist(small)


def test_shape_mismatch(small):
    image, label = _first_pair(small)
    _save(np.zeros((12, 13, 10), np.uint8), label)
    with pytest.raises(ValueError, match=rf"image imagesTr/{image.name} has shape \(12,14,10\) but label "
                                         rf"labelsTr/{label.name} has \(12,13,10\): .*resample the label"):
        nifti.load_volume_pair(image, label)
    with pytest.raises(ValueError, match="has shape"):
        msd.load_slices(small, cases=[image.name[: -len(".nii.gz")]])


def test_affine_mismatch(small):
    image, label = _first_pair(small)
    shifted = np.eye(4)
    shifted[0, 3] = 2.0
    _save(np.zeros((12, 14, 10), np.uint8), label, shifted)
    with pytest.raises(ValueError, match=rf"image imagesTr/{image.name} and label labelsTr/{label.name} have "
                                         r"different affines.*resample the label"):
        nifti.load_volume_pair(image, label)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_nifti(small, damage):
    image, label = _first_pair(small)
    if damage == "garbage":
        image.write_bytes(b"this is not a nifti file" * 10)
    else:
        image.write_bytes(image.read_bytes()[:400])
    with pytest.raises(ValueError, match=rf"image imagesTr/{image.name} cannot be read .*re-download the dataset "
                                         r"or remove the case from dataset.json"):
        nifti.load_volume_pair(image, label)


def test_multichannel_image(small):
    image, label = _first_pair(small)
    _save(np.ones((12, 14, 10, 1), np.float32), image)  # a singleton channel is squeezed
    volume, _, _ = nifti.load_volume_pair(image, label)
    assert volume.shape == (12, 14, 10)
    # two modalities (as Task05_Prostate: T2 and ADC) on the last axis, each z-scored on its own
    two = np.stack([np.arange(12 * 14 * 10, dtype=np.float32).reshape(12, 14, 10), np.full((12, 14, 10), 7.0)], -1)
    two[0, 0, 0, 1] = 8.0
    _save(two, image)
    volume, _, _ = nifti.load_volume_pair(image, label)
    assert volume.shape == (12, 14, 10, 2)
    with pytest.raises(ValueError, match=r"has 2 channel\(s\) but dataset.json lists 1 modality"):
        msd.load_slices(small, split="all", cases=[_first_case(small)])
    meta = json.loads((small / "dataset.json").read_text())
    meta["modality"] = {"0": "T2", "1": "ADC"}
    (small / "dataset.json").write_text(json.dumps(meta))
    slices = msd.load_slices(small, split="all", cases=[_first_case(small)])
    assert slices[0]["image"].shape == (2, 12, 14) and len(slices) == 10
    stacked = np.stack([s["image"] for s in slices], -1)  # (2, X, Y, Z)
    np.testing.assert_allclose(stacked[0], nifti.zscore(two[..., 0]), atol=1e-6)
    np.testing.assert_allclose(stacked[1], nifti.zscore(two[..., 1]), atol=1e-6)
    _save(np.zeros((12, 14, 10, 2), np.uint8), label)
    with pytest.raises(ValueError, match=rf"label labelsTr/{label.name} has 2 channels .*one 3D volume"):
        nifti.load_volume_pair(image, label)


@pytest.mark.parametrize("task,modalities,labels,first,shape", [
    ("heart", {"0": "MRI"}, {"0": "background", "1": "left atrium"}, "la_001.nii.gz", (20, 24, 8)),
    ("prostate", {"0": "T2", "1": "ADC"}, {"0": "background", "1": "PZ", "2": "TZ"}, "prostate_01.nii.gz",
     (20, 24, 8, 2)),
])
def test_synthetic_task_has_the_real_msd_layout(tmp_path, task, modalities, labels, first, shape):
    """The fields of the real Task02/Task05 dataset.json, their file names, 4D prostate images (X, Y, Z, modality)
    and a ._ AppleDouble file beside the first case that the loaders skip."""
    folder = synthetic_msd.write_synthetic_msd(tmp_path / task, num_cases=3, shape=(20, 24, 8), task=task)
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["modality"] == modalities and meta["labels"] == labels and meta["numTraining"] == 3
    assert meta["tensorImageSize"] == ("4D" if task == "prostate" else "3D")
    assert meta["name"] == {"heart": "LeftAtrium", "prostate": "PROSTATE"}[task]
    apple = folder / "imagesTr" / f"._{first}"
    assert apple.read_bytes()[:4] == bytes.fromhex("00051607")
    assert nib.load(str(folder / "imagesTr" / first)).shape == shape
    assert [c["case"] for c in msd.read_msd_datalist(folder)][0] == first[: -len(".nii.gz")]
    slices = msd.load_slices(folder, split="all", expected_labels=labels, channels=len(modalities))
    assert len(slices) == 24 and slices[0]["image"].shape == (len(modalities), 20, 24)
    assert [Path(d["image"]).name for d in msd.image_datalist(str(folder / "imagesTr"))][0] == first  # ._ skipped
    # the second modality is the same anatomy with another contrast, normalised on its own
    if task == "prostate":
        volume = np.stack([s["image"] for s in slices[:8]], -1)  # (2, X, Y, Z) of the first case
        assert abs(float(volume[1].mean())) < 1e-4 and abs(float(volume[1].std()) - 1) < 1e-3
        assert not np.allclose(volume[0], volume[1])
    assert synthetic_msd.write_synthetic_msd(tmp_path / task, num_cases=3, shape=(20, 24, 8), task=task) == folder  # idempotent


def test_load_slices_refuses_images_with_other_channel_counts(tmp_path):
    """The prostate bundle given a heart folder (one modality), and the heart bundle given prostate images."""
    heart = synthetic_msd.write_synthetic_msd(tmp_path / "heart", num_cases=2, shape=(12, 12, 8), task="heart")
    with pytest.raises(ValueError, match=r"image la_001.nii.gz has 1 channel\(s\) \(shape \(12, 12, 8\)\) but this "
                                         r"bundle expects 2 \(T2, ADC\), stored as a 4D NIfTI .*file: .*la_001"):
        msd.load_slices(heart, split="all", channels=2, channel_names=["T2", "ADC"])
    prostate = synthetic_msd.write_synthetic_msd(tmp_path / "prostate", num_cases=2, shape=(12, 12, 8), task="prostate")
    with pytest.raises(ValueError, match=r"prostate_01.nii.gz has 2 channel\(s\).*expects 1 \(MRI\), stored as a 3D"):
        msd.load_slices(prostate, split="all", channels=1, channel_names=["MRI"])
    with pytest.raises(ValueError, match="task='liver'"):
        synthetic_msd.write_synthetic_msd(tmp_path / "x", task="liver")


def test_label_values_outside_expected(small):
    image, label = _first_pair(small)
    bad = np.zeros((12, 14, 10), np.uint8)
    bad[0, 0, 0] = 3
    _save(bad, label)
    with pytest.raises(ValueError, match=rf"label labelsTr/{label.name} has values \[3\] outside the expected labels "
                                         r"\[0, 1, 2\]: fix the label file, remove the case"):
        nifti.load_volume_pair(image, label, expected_labels=(0, 1, 2))
    nifti.load_volume_pair(image, label)  # no check without expected_labels
    with pytest.raises(ValueError, match="outside the expected"):
        msd.load_slices(small, split="all", expected_labels={"0": "bg", "1": "a", "2": "p"})


def test_float_labels_and_uint8_images(small):
    image, label = _first_pair(small)
    _save(np.arange(12 * 14 * 10).reshape(12, 14, 10).astype(np.uint8), image)
    _save(np.full((12, 14, 10), 2.0, np.float32), label)
    volume, labels, _ = nifti.load_volume_pair(image, label, expected_labels=(0, 1, 2))
    assert volume.dtype == np.float32 and labels.dtype == np.uint8 and labels.max() == 2
    _save(np.full((12, 14, 10), 0.5, np.float32), label)
    with pytest.raises(ValueError, match=rf"label labelsTr/{label.name} holds non-integer values"):
        nifti.load_volume_pair(image, label)


# ----------------------------------------------------------------------------------------------------------------------
# real data
# ----------------------------------------------------------------------------------------------------------------------

real = pytest.mark.skipif(
    not (REAL_HIPPOCAMPUS / "dataset.json").is_file(),
    reason=f"real MSD hippocampus data not found at {REAL_HIPPOCAMPUS} (../shared/data/msd_hippocampus)",
)


@pytest.mark.realdata
@real
def test_real_hippocampus_all_cases_load():
    datalist = msd.read_msd_datalist(REAL_HIPPOCAMPUS)
    assert len(datalist) == 208
    for item in datalist:
        image, label, affine = nifti.load_volume_pair(item["image"], item["label"], expected_labels=(0, 1, 2))
        assert image.shape == label.shape and image.ndim == 3
        assert np.allclose(affine, nib.load(item["label"]).affine, atol=1e-3)
        assert set(np.unique(label).tolist()) <= {0, 1, 2}


@pytest.mark.realdata
@real
def test_real_hippocampus_train_slices():
    start = time.perf_counter()
    slices = msd.load_slices(REAL_HIPPOCAMPUS, "train", expected_labels=(0, 1, 2))
    cases = {s["case"] for s in slices}
    print(f"real hippocampus train split: {len(cases)} cases, {len(slices)} slices "
          f"({time.perf_counter() - start:.1f} s)")
    assert len(cases) == 146
    assert sorted(s["sample_id"] for s in slices) == list(range(len(slices)))
    assert all(s["image"].ndim == 3 and s["image"].shape[0] == 1 for s in slices)
    assert not cases & set(splits.split_cases(
        [item["case"] for item in msd.read_msd_datalist(REAL_HIPPOCAMPUS)])["test"])


def test_first_cases_keeps_the_first_n_and_refuses_below_one():
    from robust_bundles.data.splits import first_cases

    assert first_cases(["a", "b", "c"], 2) == ["a", "b"]
    assert first_cases(("a", "b"), None) == ["a", "b"] and first_cases(["a"], 5) == ["a"]
    with pytest.raises(ValueError, match="max_cases=0: give a positive number of images"):
        first_cases(["a"], 0, "images")


def test_the_data_package_loads_its_submodules_on_first_use():
    """Configs write ``$robust_bundles.data.msd.image_datalist(...)`` after ``import robust_bundles`` only: it resolves;
    an unknown name (the removed ``robust_bundles.msd`` facade included) is an AttributeError naming it."""
    import subprocess
    import sys

    code = ("import robust_bundles as rb; print(callable(rb.data.msd.image_datalist), "
            "callable(rb.data.synthetic_msd.synthetic_default))\n"
            "for name in ('msd', 'data.nope'):\n"
            "    try:\n        eval('rb.' + name)\n    except AttributeError as e:\n        print(e)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout
    assert out.splitlines() == ["True True", "module 'robust_bundles' has no attribute or submodule 'msd'",
                                "module 'robust_bundles.data' has no attribute or submodule 'nope'"]
