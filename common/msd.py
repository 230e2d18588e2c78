"""Medical Segmentation Decathlon (MSD) folders -> 2D slice samples with stable ids.

An MSD task folder (e.g. ``Task04_Hippocampus``) holds ``dataset.json``, ``imagesTr/*.nii.gz`` and
``labelsTr/*.nii.gz``; ``dataset.json`` lists the training cases as
``"training": [{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}, ...]``. This module turns such a
folder into the 2D samples the bundles train on:

1. :func:`read_msd_datalist` reads and checks ``dataset.json`` (one dict per case, sorted by case name).
2. :func:`split_cases` splits the *cases* (never the slices: slices of one volume are strongly correlated, so a slice
   split would put the same anatomy in train and test) into train/validation/test with a fixed seed.
3. :func:`load_volume_pair` reads one image/label pair with nibabel and checks that the two match.
4. :func:`zscore` normalises each volume as nnU-Net does for MRI.
5. :func:`load_slices` cuts the volumes of one split into 2D slices ``(1, H, W)`` and gives each slice a stable id
   (:func:`robust_bundles.transforms.assign_sample_ids` over ``(case, slice)``), so AMAT's per-sample margins stay attached
   to the right slice.

Also here: :func:`split_summary` / :func:`write_split_json` (the split, for reports), :func:`write_synthetic_msd`
(a small MSD-layout dataset with hippocampus-like anatomy, for tests and for the Heart/Prostate bundles whose real
data is not available) and :func:`fetch_msd` (an MSD folder from a folder, an archive or a URL).

Units: the MSD hippocampus volumes are about 35 x 50 x 36 voxels of 1 mm; intensities are arbitrary MRI units before
:func:`zscore` and unitless (standard deviations of the volume) after it. Slice shapes differ between cases (the crops
differ), so batching needs padding or resizing in the bundle's transforms.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence
from urllib.parse import urlparse
from urllib.request import url2pathname

import nibabel as nib
import numpy as np

from .bundle import announce_synthetic, is_synthetic, mark_synthetic
from .io import atomic_write_text
from .transforms import assign_sample_ids, datalist_digest

__all__ = [
    "synthetic_default",
    "read_msd_datalist",
    "split_cases",
    "load_volume_pair",
    "zscore",
    "load_slices",
    "slice_digest",
    "split_summary",
    "write_split_json",
    "write_synthetic_msd",
    "fetch_msd",
    "SPLITS",
]

logger = logging.getLogger("robust_bundles.msd")

#: The names of the splits made by :func:`split_cases`, in order.
SPLITS = ("train", "validation", "test")

_NIFTI_SUFFIXES = (".nii.gz", ".nii")
_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar", ".zip")
_DATASET_JSON_EXAMPLE = (
    '{"name": "MyTask", "labels": {"0": "background", "1": "..."}, "modality": {"0": "MRI"}, '
    '"training": [{"image": "./imagesTr/case_001.nii.gz", "label": "./labelsTr/case_001.nii.gz"}, ...]}'
)
_LAYOUT = "an MSD task folder holds dataset.json, imagesTr/<case>.nii.gz and labelsTr/<case>.nii.gz (same file names)"


# ----------------------------------------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------------------------------------


def _is_appledouble(name: str) -> bool:
    """macOS resource-fork files ("._x.nii.gz") that MSD archives contain next to every image: never data."""
    return Path(name).name.startswith("._")


def _strip_nifti_suffix(name: str) -> str:
    for suffix in _NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def _short(path: Path | str) -> str:
    """``imagesTr/x.nii.gz``: the file with its folder, as a user of the dataset knows it."""
    path = Path(path)
    return f"{path.parent.name}/{path.name}" if path.parent.name else path.name


def _fmt_shape(shape: Sequence[int]) -> str:
    return "(" + ",".join(str(int(s)) for s in shape) + ")"


def _atomic_save_nifti(image: nib.Nifti1Image, path: Path) -> None:
    """Save a NIfTI file whole (temporary name with the same suffix, then ``os.replace``)."""
    tmp = path.with_name(f".{path.name[: -len('.nii.gz')]}.tmp.nii.gz")
    try:
        nib.save(image, str(tmp))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# ----------------------------------------------------------------------------------------------------------------------
# dataset.json
# ----------------------------------------------------------------------------------------------------------------------


def _missing_dataset_json_error(folder: Path) -> FileNotFoundError:
    """The most helpful error for a folder without dataset.json, after looking at what the folder does hold."""
    json_path = folder / "dataset.json"
    subfolders = sorted(d for d in folder.iterdir() if d.is_dir() and (d / "dataset.json").is_file())
    if len(subfolders) == 1:
        return FileNotFoundError(
            f"{json_path} does not exist, but {subfolders[0]} has one: did you mean {subfolders[0]}? "
            f"Set dataset_dir to the task folder itself ({_LAYOUT})."
        )
    if len(subfolders) > 1:
        names = ", ".join(d.name for d in subfolders)
        return FileNotFoundError(
            f"{json_path} does not exist; several subfolders hold a dataset.json ({names}): set dataset_dir to one "
            f"of them."
        )
    if (folder / "imagesTr").is_dir():
        return FileNotFoundError(
            f"{json_path} does not exist, but {folder / 'imagesTr'} does: an MSD folder needs a dataset.json that "
            f"lists its cases. Write one next to imagesTr/ and labelsTr/, e.g. {_DATASET_JSON_EXAMPLE} "
            f"(robust_bundles.msd.write_synthetic_msd shows a complete example)."
        )
    loose = sorted(
        p.name for p in folder.iterdir() if p.name.endswith(_NIFTI_SUFFIXES) and not _is_appledouble(p.name)
    )
    if loose:
        return FileNotFoundError(
            f"{json_path} does not exist and {folder} holds {len(loose)} NIfTI file(s) directly (e.g. {loose[0]}): "
            f"{_LAYOUT}. Move the images to imagesTr/ and the labels to labelsTr/ and write dataset.json, e.g. "
            f"{_DATASET_JSON_EXAMPLE}."
        )
    return FileNotFoundError(
        f"{json_path} does not exist: {folder} is not an MSD task folder ({_LAYOUT}). Set dataset_dir to such a "
        f"folder, or get one with robust_bundles.msd.fetch_msd (folder, .tar archive or URL)."
    )


def _dataset_json_path(dataset_dir: str | os.PathLike) -> Path:
    """Check that ``dataset_dir`` is an MSD folder and return its dataset.json, or raise the most helpful error."""
    folder = Path(dataset_dir).expanduser()
    if not folder.exists():
        raise FileNotFoundError(
            f"MSD dataset folder {folder} does not exist: set dataset_dir to the task folder ({_LAYOUT}), e.g. "
            f"../shared/data/msd_hippocampus, or get one with robust_bundles.msd.fetch_msd."
        )
    if not folder.is_dir():
        if folder.name.endswith(_ARCHIVE_SUFFIXES):
            raise NotADirectoryError(
                f"{folder} is an archive, not a folder: extract it with robust_bundles.msd.fetch_msd({str(folder)!r}, root) "
                f"and set dataset_dir to the folder it returns."
            )
        if folder.name == "dataset.json":
            raise NotADirectoryError(f"{folder} is the dataset.json file: set dataset_dir to {folder.parent}.")
        raise NotADirectoryError(f"{folder} is a file, not a folder: set dataset_dir to the task folder ({_LAYOUT}).")
    json_path = folder / "dataset.json"
    if not json_path.is_file():
        raise _missing_dataset_json_error(folder)
    return json_path


def _read_dataset_json(json_path: Path) -> dict:
    try:
        meta = json.loads(json_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(
            f"{json_path} is not valid JSON ({exc}): fix the file, or restore it from the dataset archive."
        ) from exc
    if not isinstance(meta, dict) or not isinstance(meta.get("training"), list):
        raise ValueError(
            f"{json_path} has no 'training' list: an MSD dataset.json lists its cases as {_DATASET_JSON_EXAMPLE}."
        )
    return meta


def read_msd_datalist(dataset_dir: str | os.PathLike) -> list[dict]:
    """Read the training cases of an MSD task folder.

    Args:
        dataset_dir: the task folder holding ``dataset.json``, ``imagesTr/`` and ``labelsTr/``.

    Returns:
        One dict per case, sorted by case name: ``{"image": str, "label": str, "case": str}`` with absolute paths
        and the case name being the image file name without ``.nii.gz`` (e.g. ``"hippocampus_001"``). macOS
        ``._`` files listed in dataset.json are skipped.

    Raises:
        FileNotFoundError: the folder, its dataset.json or a listed image/label file is missing (the message names
            the file and says what to do).
        NotADirectoryError: ``dataset_dir`` is a file (e.g. the not yet extracted archive).
        ValueError: dataset.json is not valid JSON, has no ``training`` list, or lists a case badly or twice.
    """
    json_path = _dataset_json_path(dataset_dir)
    folder = json_path.parent.resolve()
    meta = _read_dataset_json(json_path)

    datalist, missing, seen = [], [], {}
    for index, entry in enumerate(meta["training"]):
        if not (isinstance(entry, dict) and all(isinstance(entry.get(k), str) for k in ("image", "label"))):
            raise ValueError(
                f"{json_path}: training entry {index} is {entry!r}; each entry needs an 'image' and a 'label' path, "
                f'e.g. {{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}}.'
            )
        if _is_appledouble(entry["image"]):
            continue
        image = Path(os.path.normpath(folder / entry["image"]))
        label = Path(os.path.normpath(folder / entry["label"]))
        case = _strip_nifti_suffix(image.name)
        if case in seen:
            raise ValueError(
                f"{json_path} lists case {case!r} twice (training entries {seen[case]} and {index}): remove one."
            )
        seen[case] = index
        missing += [p for p in (image, label) if not p.is_file()]
        datalist.append({"image": str(image), "label": str(label), "case": case})

    if missing:
        first = os.path.relpath(missing[0], folder)
        more = f" (and {len(missing) - 1} more listed file(s))" if len(missing) > 1 else ""
        raise FileNotFoundError(
            f"{first} listed in dataset.json is missing{more} in {folder}: re-extract or re-download the dataset, "
            f"or remove the case from {json_path}."
        )
    if not datalist:
        raise ValueError(f"{json_path} lists no training cases: add them to its 'training' list.")
    return sorted(datalist, key=lambda item: item["case"])


# ----------------------------------------------------------------------------------------------------------------------
# splits
# ----------------------------------------------------------------------------------------------------------------------


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or any(not np.isfinite(f) or f < 0 for f in fractions):
        raise ValueError(f"fractions={fractions}: give three non-negative fractions (train, validation, test).")
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"fractions={fractions} sum to {sum(fractions):.6g}: they must sum to 1, e.g. (0.7, 0.1, 0.2)")
    return fractions  # type: ignore[return-value]


def _split_counts(n: int, fractions: Sequence[float]) -> list[int]:
    """Largest-remainder rounding of ``n * fractions``, then at least one case in every split with a fraction > 0."""
    exact = [n * f for f in fractions]
    counts = [int(np.floor(x)) for x in exact]
    # remainders rounded so that float noise (208 * 0.7 = 145.59999...) does not decide ties
    by_remainder = sorted(range(len(exact)), key=lambda i: (-round(exact[i] - counts[i], 9), i))
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    for i, f in enumerate(fractions):
        if f > 0 and counts[i] == 0:
            donor = max(range(len(counts)), key=lambda j: counts[j])
            counts[donor] -= 1
            counts[i] += 1
    return counts


def split_cases(
    cases: Sequence[str], fractions: Sequence[float] = (0.7, 0.1, 0.2), seed: int = 0
) -> dict[str, list[str]]:
    """Split case names into train/validation/test, deterministically and by case (never by slice).

    The names are sorted, permuted with ``numpy.random.default_rng(seed)`` and cut into consecutive parts of
    ``fractions`` (largest-remainder rounding, so 208 cases with (0.7, 0.1, 0.2) give 146/21/41). The result depends
    only on the set of names, the fractions and the seed: the input order does not matter.

    Args:
        cases: unique case names, e.g. ``["hippocampus_001", ...]``.
        fractions: (train, validation, test) fractions of the cases; non-negative, summing to 1. A split whose
            fraction is 0 is empty; every other split gets at least one case.
        seed: seed of the permutation.

    Returns:
        ``{"train": [...], "validation": [...], "test": [...]}``, each list sorted; every case is in exactly one.

    Raises:
        ValueError: bad fractions, duplicate names, or fewer cases than splits with a fraction > 0 (e.g. fewer
            than 3 cases for three non-empty splits).
    """
    fractions = _check_fractions(fractions)
    names = sorted(str(c) for c in cases)
    duplicates = sorted({c for c, d in zip(names, names[1:]) if c == d})
    if duplicates:
        raise ValueError(f"split_cases got case {duplicates[0]!r} more than once: case names must be unique.")
    needed = sum(f > 0 for f in fractions)
    if len(names) < needed:
        raise ValueError(
            f"Cannot split {len(names)} case(s) into {needed} non-empty splits with fractions={fractions}: "
            f"use at least {needed} cases (a test split must not share a case with training), or set the fraction "
            f"of an unused split to 0."
        )
    counts = _split_counts(len(names), fractions)
    order = np.random.default_rng(seed).permutation(len(names))
    shuffled = [names[i] for i in order]
    bounds = np.cumsum([0, *counts])
    return {split: sorted(shuffled[bounds[i] : bounds[i + 1]]) for i, split in enumerate(SPLITS)}


def split_summary(
    dataset_dir: str | os.PathLike, fractions: Sequence[float] = (0.7, 0.1, 0.2), seed: int = 0
) -> dict[str, Any]:
    """The case split of an MSD folder, for reports and for checking at resume that the split did not change.

    Args:
        dataset_dir: the MSD task folder.
        fractions: (train, validation, test) fractions, as for :func:`split_cases`.
        seed: seed of the split.

    Returns:
        ``{"dataset": name from dataset.json, "dataset_dir": str, "fractions": [...], "seed": int,
        "num_cases": {"train": n, ...}, "cases": {"train": [...], "validation": [...], "test": [...]},
        "digest": sha256 hex of the cases per split}``.
    """
    json_path = _dataset_json_path(dataset_dir)
    meta = _read_dataset_json(json_path)
    datalist = read_msd_datalist(dataset_dir)
    splits = split_cases([item["case"] for item in datalist], fractions, seed)
    keyed = [{"case": case, "split": split} for split in SPLITS for case in splits[split]]
    return {
        "dataset": meta.get("name", json_path.parent.name),
        "dataset_dir": str(json_path.parent.resolve()),
        "fractions": list(_check_fractions(fractions)),
        "seed": int(seed),
        "num_cases": {split: len(splits[split]) for split in SPLITS},
        "cases": splits,
        "digest": datalist_digest(keyed, ("split", "case")),
    }


def write_split_json(
    path: str | os.PathLike,
    dataset_dir: str | os.PathLike,
    fractions: Sequence[float] = (0.7, 0.1, 0.2),
    seed: int = 0,
) -> Path:
    """Write :func:`split_summary` to ``path`` as JSON, atomically (temporary file, then ``os.replace``).

    Args:
        path: the JSON file to write; its folder is created.
        dataset_dir: the MSD task folder.
        fractions: (train, validation, test) fractions.
        seed: seed of the split.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    atomic_write_text(path, json.dumps(split_summary(dataset_dir, fractions, seed), indent=1) + "\n")
    return path


# ----------------------------------------------------------------------------------------------------------------------
# volumes
# ----------------------------------------------------------------------------------------------------------------------

_REREAD = "re-download the dataset or remove the case from dataset.json"


def _load_nifti(path: Path, role: str) -> tuple[np.ndarray, np.ndarray]:
    """Read one NIfTI file fully: (array as stored, affine). Any decoding problem names the file."""
    if not path.is_file():
        raise FileNotFoundError(f"{role} {path} does not exist: {_REREAD}.")
    try:
        image = nib.load(str(path))
        data = np.asanyarray(image.dataobj)
        affine = np.asarray(image.affine, dtype=np.float64)
    except Exception as exc:  # nibabel, gzip, zlib and numpy raise many types for a damaged file
        raise ValueError(
            f"{role} {_short(path)} cannot be read ({type(exc).__name__}: {exc}); the file is corrupt or not NIfTI: "
            f"{_REREAD} (file: {path})."
        ) from exc
    return data, affine


def _as_3d(data: np.ndarray, path: Path, role: str) -> np.ndarray:
    if data.ndim == 4 and data.shape[-1] == 1:
        return data[..., 0]
    if data.ndim == 4:
        raise ValueError(
            f"{role} {_short(path)} has {data.shape[-1]} channels (shape {_fmt_shape(data.shape)}): this version "
            f"handles single-modality tasks (one channel, e.g. Task04_Hippocampus, Task02_Heart). For a "
            f"multi-modality task (e.g. Task05_Prostate: T2 and ADC) save the modality you want as a 3D volume "
            f"(file: {path})."
        )
    if data.ndim != 3:
        raise ValueError(
            f"{role} {_short(path)} has shape {_fmt_shape(data.shape)}: a 3D volume (X, Y, Z) is expected, or 4D "
            f"with one channel. Re-save it as 3D or {_REREAD} (file: {path})."
        )
    return data


def _label_set(expected_labels: Iterable[int | str] | Mapping | None) -> set[int] | None:
    if expected_labels is None:
        return None
    return {int(v) for v in expected_labels}


def load_volume_pair(
    image_path: str | os.PathLike,
    label_path: str | os.PathLike,
    expected_labels: Iterable[int | str] | Mapping | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read an image/label pair of NIfTI volumes and check that they belong together.

    Args:
        image_path: the image file (3D, or 4D with a single channel, which is squeezed); uint8 or float storage.
        label_path: the label file on the same voxel grid; integer class indices (float storage is accepted when
            every value is an integer).
        expected_labels: the class indices a label may hold, e.g. ``(0, 1, 2)`` or the ``labels`` dict of
            dataset.json (its keys are used); ``None`` skips the check.

    Returns:
        ``(image, label, affine)``: image float32 ``(X, Y, Z)`` in the file's intensity units (scaling from the
        header applied), label uint8 ``(X, Y, Z)``, affine float64 ``(4, 4)`` (voxel -> world, mm) of the image.

    Raises:
        FileNotFoundError: a file does not exist.
        ValueError: a file is corrupt or unreadable, a volume is not 3D (or is multi-channel), the shapes or the
            affines (beyond 1e-3) differ, the label holds non-integer or unexpected values, or the image holds
            NaN/inf. Every message names the file(s) and the fix.
    """
    image_path, label_path = Path(image_path), Path(label_path)
    image_raw, affine = _load_nifti(image_path, "image")
    label_raw, label_affine = _load_nifti(label_path, "label")
    image_raw = _as_3d(image_raw, image_path, "image")
    label_raw = _as_3d(label_raw, label_path, "label")
    where = f"(files: {image_path}, {label_path})"

    if image_raw.shape != label_raw.shape:
        raise ValueError(
            f"image {_short(image_path)} has shape {_fmt_shape(image_raw.shape)} but label {_short(label_path)} has "
            f"{_fmt_shape(label_raw.shape)}: they must be on the same voxel grid; resample the label onto the image "
            f"(nearest neighbour) or {_REREAD} {where}."
        )
    affine_gap = float(np.max(np.abs(affine - label_affine)))
    if affine_gap > 1e-3:
        raise ValueError(
            f"image {_short(image_path)} and label {_short(label_path)} have different affines (largest difference "
            f"{affine_gap:.4g}; image {np.round(affine, 4).tolist()}, label {np.round(label_affine, 4).tolist()}): "
            f"they must be on the same voxel grid; resample the label onto the image or {_REREAD} {where}."
        )

    image = image_raw.astype(np.float32, copy=False)
    if not np.isfinite(image).all():
        raise ValueError(f"image {_short(image_path)} holds NaN or inf values: {_REREAD} (file: {image_path}).")

    if np.issubdtype(label_raw.dtype, np.floating):
        if not np.isfinite(label_raw).all() or not np.array_equal(label_raw, np.round(label_raw)):
            raise ValueError(
                f"label {_short(label_path)} holds non-integer values: a label map holds class indices; re-save it "
                f"with nearest-neighbour resampling or {_REREAD} (file: {label_path})."
            )
    values = np.unique(label_raw)
    expected = _label_set(expected_labels)
    if expected is not None:
        unexpected = [v for v in values.tolist() if int(v) not in expected]
        if unexpected:
            raise ValueError(
                f"label {_short(label_path)} has values {sorted(int(v) for v in unexpected)} outside the expected "
                f"labels {sorted(expected)}: fix the label file, remove the case from dataset.json, or pass the right "
                f"expected_labels (the 'labels' of dataset.json) (file: {label_path})."
            )
    if values.size and (values.min() < 0 or values.max() > 255):
        raise ValueError(
            f"label {_short(label_path)} has values from {values.min():g} to {values.max():g}: class indices must be "
            f"in 0..255; remap the labels or {_REREAD} (file: {label_path})."
        )
    return image, label_raw.astype(np.uint8), affine


def zscore(volume: np.ndarray) -> np.ndarray:
    """Per-volume z-score normalisation, as nnU-Net normalises MRI (its ``ZScoreNormalization`` without a mask).

    ``(v - mean(v)) / max(std(v), 1e-8)`` with the mean and the standard deviation taken over the whole volume
    (accumulated in float64). Every case is normalised on its own, which removes the arbitrary scale of MRI
    intensities; the result is in units of the volume's standard deviation, so the L2 noise levels eps of the
    paper apply to it.

    Args:
        volume: array of any shape (e.g. ``(X, Y, Z)``), any real dtype.

    Returns:
        float32 array of the same shape, mean ~0 and standard deviation ~1 (0 everywhere for a constant volume).
    """
    volume = np.asarray(volume)
    mean = volume.mean(dtype=np.float64)
    std = volume.std(dtype=np.float64)
    return ((volume - mean) / max(std, 1e-8)).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------------------
# slices
# ----------------------------------------------------------------------------------------------------------------------


def _select_cases(
    datalist: list[dict],
    split: str,
    fractions: Sequence[float],
    seed: int,
    max_cases: int | None,
    cases: Sequence[str] | None,
    dataset_dir: str | os.PathLike,
) -> list[dict]:
    by_case = {item["case"]: item for item in datalist}
    if cases is not None:
        chosen = sorted(dict.fromkeys(str(c) for c in cases))
        unknown = [c for c in chosen if c not in by_case]
        if unknown:
            examples = ", ".join(sorted(by_case)[:3])
            raise ValueError(
                f"cases {unknown[:5]} are not in {Path(dataset_dir) / 'dataset.json'} (it lists e.g. {examples}): "
                f"pass case names as in dataset.json, without .nii.gz."
            )
    elif split == "all":
        chosen = sorted(by_case)
    elif split in SPLITS:
        chosen = split_cases(list(by_case), fractions, seed)[split]
    else:
        raise ValueError(f"split={split!r}: use one of {SPLITS + ('all',)}.")
    if max_cases is not None:
        if int(max_cases) < 1:
            raise ValueError(f"max_cases={max_cases}: give a positive number of cases, or None for all of them.")
        chosen = chosen[: int(max_cases)]
    return [by_case[c] for c in chosen]


def load_slices(
    dataset_dir: str | os.PathLike,
    split: str = "train",
    fractions: Sequence[float] = (0.7, 0.1, 0.2),
    seed: int = 0,
    slice_axis: int = -1,
    expected_labels: Iterable[int | str] | Mapping | None = None,
    max_cases: int | None = None,
    cases: Sequence[str] | None = None,
) -> list[dict]:
    """Load the volumes of one split and cut them into 2D slice samples with stable ids.

    Each image is z-scored per volume (:func:`zscore`) before slicing, so every slice of a case shares the
    normalisation of its volume. Every slice is kept, including those without foreground.

    Args:
        dataset_dir: the MSD task folder.
        split: ``"train"``, ``"validation"``, ``"test"`` (see :func:`split_cases`) or ``"all"`` (every case).
        fractions: (train, validation, test) fractions of the cases.
        seed: seed of the case split.
        slice_axis: the volume axis the slices are cut along (-1: the last axis, Z, giving (X, Y) slices).
        expected_labels: class indices a label may hold (see :func:`load_volume_pair`); ``None`` skips the check.
        max_cases: keep only the first n cases of the split (sorted by name), for quick profiles.
        cases: use exactly these cases instead of a split (``split`` then only names them in the log).

    Returns:
        A plain list of dicts ``{"image": float32 (1, H, W), "label": uint8 (1, H, W), "case": str, "slice": int,
        "sample_id": int}``, ordered by case then slice, with ids 0..N-1 from
        :func:`robust_bundles.transforms.assign_sample_ids` over ``(case, slice)``; :func:`slice_digest` gives their digest.
        H and W are the volume's extent along the two other axes and differ between cases.
    """
    if not isinstance(slice_axis, (int, np.integer)) or not -3 <= int(slice_axis) <= 2:
        raise ValueError(f"slice_axis={slice_axis!r}: give a volume axis in -3..2 (-1 = the last axis).")
    datalist = read_msd_datalist(dataset_dir)
    selected = _select_cases(datalist, split, fractions, seed, max_cases, cases, dataset_dir)

    slices: list[dict] = []
    for item in selected:
        image, label, _ = load_volume_pair(item["image"], item["label"], expected_labels)
        image = np.moveaxis(zscore(image), int(slice_axis), 0)
        label = np.moveaxis(label, int(slice_axis), 0)
        for index in range(image.shape[0]):
            slices.append(
                {
                    "image": np.ascontiguousarray(image[index][None]),
                    "label": np.ascontiguousarray(label[index][None]),
                    "case": item["case"],
                    "slice": index,
                }
            )
    slices, _ = assign_sample_ids(slices, ("case", "slice"))
    ids = f"ids 0..{len(slices) - 1}" if slices else "no ids"
    logger.info("%s split: %d cases, %d slices (%s)", split, len(selected), len(slices), ids)
    return slices


def slice_digest(slices: Sequence[Mapping]) -> str:
    """The digest of a list of slice samples: sha256 hex of their sorted ``(case, slice)`` keys.

    Equal to the digest :func:`robust_bundles.transforms.assign_sample_ids` returns for them, so it identifies the set of
    samples (and hence the meaning of every id) independently of list order. Store it with the margins. The keys do
    not hold ``slice_axis`` or the normalisation: keep those in the (checkpointed) config.

    Args:
        slices: the samples from :func:`load_slices` (any order).
    """
    return datalist_digest(slices, ("case", "slice"))


# ----------------------------------------------------------------------------------------------------------------------
# synthetic data
# ----------------------------------------------------------------------------------------------------------------------


def _smooth_field(rng: np.random.Generator, grid: np.ndarray, waves: int = 6, wavelength=(12.0, 40.0)) -> np.ndarray:
    """Low-frequency noise: a sum of random plane waves (wavelengths in voxels), standard deviation about 1."""
    field = np.zeros(grid.shape[1:], dtype=np.float64)
    for _ in range(waves):
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        k = 2 * np.pi / rng.uniform(*wavelength)
        field += rng.normal() * np.cos(k * np.tensordot(direction, grid, axes=1) + rng.uniform(0, 2 * np.pi))
    return field * np.sqrt(2.0 / waves)


def _random_rotation(rng: np.random.Generator, max_angle: float) -> np.ndarray:
    """A rotation matrix made of three rotations about the coordinate axes, each by at most ``max_angle`` radians."""
    rotation = np.eye(3)
    for axis in range(3):
        angle = rng.uniform(-max_angle, max_angle)
        i, j = [a for a in range(3) if a != axis]
        turn = np.eye(3)
        turn[i, i] = turn[j, j] = np.cos(angle)
        turn[i, j], turn[j, i] = -np.sin(angle), np.sin(angle)
        rotation = turn @ rotation
    return rotation


def _synthetic_case(rng: np.random.Generator, shape: Sequence[int], num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic volume: smooth background, a chain of adjacent ellipsoids (one per foreground class), noise.

    Returns (image float32 in arbitrary MRI-like units, label uint8 in 0..num_classes-1).
    """
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float64) for s in shape], indexing="ij"))
    scale = min(shape) / 35.0  # sizes below are for a 35-voxel crop, like the MSD hippocampus
    # the chain of ellipsoids runs roughly along the longest axis of the crop (as the anterior and posterior parts of
    # a hippocampus do), turned by up to about 30 degrees about every axis
    long_axis = int(np.argmax(shape))
    frame = np.eye(3)[:, [long_axis] + [a for a in range(3) if a != long_axis]]
    rotation = _random_rotation(rng, np.pi / 6) @ frame
    axis = rotation[:, 0]
    centre = np.asarray(shape, dtype=np.float64) / 2 + rng.uniform(-2.5, 2.5, size=3) * scale
    semi_axes = [
        np.array([rng.uniform(7.0, 10.0), rng.uniform(4.5, 6.5), rng.uniform(4.0, 5.5)]) * scale
        for _ in range(num_classes - 1)
    ]
    offsets = np.cumsum([0.0] + [0.8 * (a[0] + b[0]) for a, b in zip(semi_axes, semi_axes[1:])])
    offsets -= offsets.mean()

    label = np.zeros(shape, dtype=np.uint8)
    best = np.full(shape, np.inf)
    for cls, (semi, offset) in enumerate(zip(semi_axes, offsets), start=1):
        local = np.tensordot(rotation.T, grid - (centre + offset * axis)[:, None, None, None], axes=1)
        radius = np.sqrt(np.sum((local / semi[:, None, None, None]) ** 2, axis=0))
        inside = (radius <= 1.0) & (radius < best)
        label[inside] = cls
        best = np.minimum(best, np.where(inside, radius, best))

    # class means overlap the bright end of the background and each other: context and shape are needed too
    class_means = np.concatenate([[0.0], 1.6 + 0.9 * np.arange(num_classes - 1)])
    image = 0.55 * _smooth_field(rng, grid) + class_means[label]
    image += 0.2 * _smooth_field(rng, grid, waves=4, wavelength=(6.0, 12.0)) * (label > 0)
    image += rng.normal(0.0, 0.4, size=shape)
    gain, offset = rng.uniform(60, 140), rng.uniform(150, 350)  # arbitrary scanner units, removed by zscore
    return np.clip(image * gain + offset, 0, None).astype(np.float32), label


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "case"


def _is_complete(folder: Path, params: dict) -> bool:
    try:
        meta = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(meta, dict) or meta.get("synthetic") != params:
        return False
    return all((folder / e[k]).is_file() for e in meta.get("training", []) for k in ("image", "label"))


def write_synthetic_msd(
    out_dir: str | os.PathLike,
    num_cases: int = 12,
    shape: Sequence[int] = (35, 50, 36),
    seed: int = 0,
    name: str = "SyntheticHippocampus",
    labels: Sequence[str] = ("background", "anterior", "posterior"),
) -> Path:
    """Write a small MSD-layout dataset with hippocampus-like anatomy, for tests and quick profiles.

    Every case has a smooth random field (low-frequency noise, which also shades the structures like an MRI bias
    field), one ellipsoid per foreground class, chained roughly along the longest axis of the crop and overlapping
    the next (random size, position and orientation within about 30 degrees), class-specific mean intensities with
    a smooth texture, and Gaussian noise. Intensities overlap a little between the classes and with the background:
    the best single threshold separates foreground from background with a Dice of only about 0.7, while a small 2D
    U-Net (MONAI ``UNet``, channels 16/32/64, Adam) reaches a Dice of about 0.77 (class 1) and 0.89 (class 2) on
    held-out cases after 2000 iterations of 8 slices, about 40 s on two CPU cores. Foreground classes cover about
    1.4 % of the crop each (3 % in the real hippocampus crops). Voxels are 1 mm (identity affine); images are
    float32 in arbitrary units (each case has its own gain and offset, which :func:`zscore` removes), labels uint8.

    The output is deterministic given the arguments, and each case depends only on ``seed`` and its index. If
    ``out_dir`` already holds a complete dataset written with the same arguments (stored in dataset.json under
    ``"synthetic"``), nothing is rewritten. dataset.json is written last and atomically, so an interrupted run is
    never taken for a complete one.

    Args:
        out_dir: the task folder to write (created), e.g. ``tmp_path / "Task04_Synthetic"``.
        num_cases: number of image/label pairs.
        shape: volume shape (X, Y, Z) in voxels (1 mm).
        seed: random seed.
        name: dataset name in dataset.json; case files are ``<name in snake case>_001.nii.gz``, ...
        labels: class names, background first; there are ``len(labels) - 1`` foreground classes.

    Returns:
        ``out_dir`` as a :class:`~pathlib.Path`.

    Raises:
        FileExistsError: ``out_dir`` holds a dataset.json that this function did not write (a real dataset).
        ValueError: bad arguments.
    """
    out = Path(out_dir)
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"shape={shape}: give a 3D shape of at least 8 voxels per axis, e.g. (35, 50, 36).")
    if int(num_cases) < 1:
        raise ValueError(f"num_cases={num_cases}: give at least one case.")
    if len(labels) < 2:
        raise ValueError(f"labels={tuple(labels)}: give the background and at least one foreground class name.")
    params = {
        "generator": "robust_bundles.msd.write_synthetic_msd",
        "version": 1,
        "num_cases": int(num_cases),
        "shape": list(shape),
        "seed": int(seed),
        "name": str(name),
        "labels": [str(label) for label in labels],
    }
    json_path = out / "dataset.json"
    if json_path.is_file():
        if _is_complete(out, params):
            logger.info("synthetic dataset %s already complete, not rewritten", out)
            return out
        try:
            old = json.loads(json_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = None
        if not (isinstance(old, dict) and "synthetic" in old):
            raise FileExistsError(
                f"{json_path} exists and was not written by write_synthetic_msd: refusing to overwrite a real "
                f"dataset; choose an empty out_dir."
            )
        json_path.unlink()  # the old synthetic set is no longer complete while it is being replaced
        for entry in old.get("training", []):
            for key in ("image", "label"):
                if isinstance(entry, dict) and entry.get(key):
                    (out / entry[key]).unlink(missing_ok=True)

    (out / "imagesTr").mkdir(parents=True, exist_ok=True)
    (out / "labelsTr").mkdir(parents=True, exist_ok=True)
    affine = np.eye(4)
    prefix = _slug(name)
    training = []
    for index in range(1, int(num_cases) + 1):
        rng = np.random.default_rng([int(seed), index])
        image, label = _synthetic_case(rng, shape, len(labels))
        file_name = f"{prefix}_{index:03d}.nii.gz"
        for folder, array in (("imagesTr", image), ("labelsTr", label)):
            nifti = nib.Nifti1Image(array, affine)
            nifti.header.set_xyzt_units("mm")
            _atomic_save_nifti(nifti, out / folder / file_name)
        training.append({"image": f"./imagesTr/{file_name}", "label": f"./labelsTr/{file_name}"})

    meta = {
        "name": str(name),
        "description": "Synthetic hippocampus-like volumes (smooth background, adjacent ellipsoids, noise)",
        "reference": "robust-bundles robust_bundles.msd.write_synthetic_msd",
        "licence": "CC0 (synthetic)",
        "tensorImageSize": "3D",
        "modality": {"0": "MRI"},
        "labels": {str(i): str(label) for i, label in enumerate(labels)},
        "numTraining": len(training),
        "numTest": 0,
        "training": training,
        "test": [],
        "synthetic": params,
    }
    mark_synthetic(out, "robust_bundles.msd.write_synthetic_msd")
    atomic_write_text(json_path, json.dumps(meta, indent=1) + "\n")
    return out


def synthetic_default(out_dir: str | os.PathLike, num_cases: int = 12, **kwargs) -> str:
    """The default ``dataset_dir`` of a bundle: :func:`write_synthetic_msd` (written once), announced loudly.

    Every run on it logs a warning that its numbers say nothing about the real task, and the robustness reports
    say so too (:func:`robust_bundles.bundle.is_synthetic`).
    """
    out = write_synthetic_msd(out_dir, num_cases=num_cases, **kwargs)
    if not is_synthetic(out):  # written by an older version
        mark_synthetic(out, "robust_bundles.msd.write_synthetic_msd")
    return announce_synthetic(out, "synthetic MSD volumes (robust_bundles.msd.write_synthetic_msd)")


# ----------------------------------------------------------------------------------------------------------------------
# fetching
# ----------------------------------------------------------------------------------------------------------------------


def _inside(path: str, root: str) -> bool:
    return os.path.commonpath([path, root]) == root


def _check_member(name: str, dest: str, archive: Path, link: str | None = None, hardlink: bool = False) -> None:
    """Refuse an archive member (or link target) that would land outside ``dest``."""
    unsafe = f"refusing to extract {archive}: the archive is unsafe or damaged; re-download it from its source."
    if os.path.isabs(name) or name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise ValueError(f"archive member {name!r} has an absolute path: {unsafe}")
    target = os.path.realpath(os.path.join(dest, name))
    if not _inside(target, dest):
        raise ValueError(f"archive member {name!r} would be written outside {dest}: {unsafe}")
    if link is not None:
        base = dest if hardlink else os.path.dirname(target)
        if os.path.isabs(link) or not _inside(os.path.realpath(os.path.join(base, link)), dest):
            raise ValueError(f"archive member {name!r} links to {link!r} outside {dest}: {unsafe}")


def _archive_names(archive: Path, dest: str) -> list[str]:
    """Check every member of a tar or zip archive and return the names of the regular files (no ``._`` files)."""
    names = []
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for name in zf.namelist():
                _check_member(name, dest, archive)
                if not name.endswith("/") and not _is_appledouble(name):
                    names.append(name)
        return names
    with tarfile.open(archive, "r:*") as tf:
        for member in tf.getmembers():
            link = member.linkname if (member.issym() or member.islnk()) else None
            _check_member(member.name, dest, archive, link, hardlink=member.islnk())
            if member.isdev() or member.isfifo():
                raise ValueError(
                    f"archive member {member.name!r} is a device or pipe: refusing to extract {archive}; "
                    f"re-download it from its source."
                )
            if member.isfile() and not _is_appledouble(member.name):
                names.append(member.name)
    return names


def _extract_all(archive: Path, dest: Path) -> None:
    """Extract the (already checked) archive into ``dest``, skipping macOS ``._`` files."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(dest, members=[n for n in zf.namelist() if not _is_appledouble(n)])
        return
    with tarfile.open(archive, "r:*") as tf:
        members = [m for m in tf.getmembers() if not _is_appledouble(m.name)]
        if hasattr(tarfile, "data_filter"):  # Python >= 3.12 and security backports: a second line of defence
            tf.extractall(dest, members=members, filter="data")
        else:  # pragma: no cover - old Pythons; members were checked by _archive_names
            tf.extractall(dest, members=members)


def _archive_stem(archive: Path) -> str:
    for suffix in _ARCHIVE_SUFFIXES:
        if archive.name.endswith(suffix):
            return archive.name[: -len(suffix)]
    return archive.stem


def _extract_msd_archive(archive: Path, root: Path) -> Path:
    """Safely extract an MSD task archive into ``root`` and return the folder holding dataset.json."""
    if not (tarfile.is_tarfile(archive) or zipfile.is_zipfile(archive)):
        raise ValueError(
            f"{archive} is not a tar or zip archive: give an MSD task folder, a .tar/.tar.gz/.zip archive of one "
            f"(e.g. Task04_Hippocampus.tar), or its http(s) URL."
        )
    root.mkdir(parents=True, exist_ok=True)
    dest = os.path.realpath(root)
    names = _archive_names(archive, dest)
    jsons = sorted((n for n in names if Path(n).name == "dataset.json"), key=lambda n: (len(Path(n).parts), n))
    if not jsons:
        raise ValueError(f"{archive} holds no dataset.json: it is not an MSD task archive ({_LAYOUT}).")
    rel = Path(jsons[0]).parent  # e.g. Task04_Hippocampus, or "." for an archive of the folder's contents
    top = rel.parts[0] if rel.parts else _archive_stem(archive)
    dataset_dir = root / top / Path(*rel.parts[1:]) if rel.parts else root / top
    if (dataset_dir / "dataset.json").is_file():
        logger.info("%s already extracted to %s", archive.name, dataset_dir)
        return dataset_dir
    if (root / top).exists():
        raise FileExistsError(
            f"{root / top} exists but holds no complete extraction of {archive.name} (no dataset.json): remove it "
            f"and run again."
        )
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".extract-{top}-"))
    try:
        _extract_all(archive, tmp)
        os.replace(tmp / top if rel.parts else tmp, root / top)  # appears whole, or not at all
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("extracted %s to %s", archive.name, dataset_dir)
    return dataset_dir


def fetch_msd(
    source: str | os.PathLike, root: str | os.PathLike, hash_val: str | None = None, hash_type: str = "md5"
) -> Path:
    """Return an MSD task folder from a folder, an archive or a URL.

    Args:
        source: one of

            - an existing MSD task folder (holding dataset.json): returned as is;
            - a path or ``file://`` URL of a ``.tar``/``.tar.gz``/``.zip`` archive such as ``Task04_Hippocampus.tar``:
              extracted into ``root`` (members that would land outside ``root``, absolute paths, links out of
              ``root`` and device files are refused; macOS ``._`` files are skipped; an existing complete
              extraction is reused);
            - an ``http(s)://`` URL of such an archive: downloaded into ``root`` with ``monai.apps.download_url``
              (needs network access; MSD archives are listed at http://medicaldecathlon.com), then extracted as
              above.
        root: the folder that archives are downloaded and extracted into (created).
        hash_val: optional checksum of a downloaded archive (checked by MONAI).
        hash_type: the checksum's algorithm ("md5", "sha1", "sha256", "sha512").

    Returns:
        The folder that holds dataset.json.

    Raises:
        FileNotFoundError: a local source does not exist, or a folder is not an MSD task folder.
        ValueError: the archive is unsafe, not an archive, or holds no dataset.json.
    """
    root = Path(root).expanduser()
    text = os.fspath(source)
    parsed = urlparse(text) if isinstance(text, str) else None
    if parsed is not None and parsed.scheme in ("http", "https"):
        from monai.apps import download_url  # imported here: MONAI's download machinery is only needed for URLs

        file_name = Path(parsed.path).name or "msd_task.tar"
        root.mkdir(parents=True, exist_ok=True)
        archive = root / file_name
        download_url(text, filepath=archive, hash_val=hash_val, hash_type=hash_type)
        return _extract_msd_archive(archive, root)
    if parsed is not None and parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"{text}: only local file:// URLs are supported (file:///path/to/Task04_Hippocampus.tar).")
        path = Path(url2pathname(parsed.path))
    else:
        path = Path(text).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"MSD source {path} does not exist: give an MSD task folder (with dataset.json), a .tar/.tar.gz/.zip "
            f"archive of one, or an http(s) URL (e.g. the Task04_Hippocampus.tar link of medicaldecathlon.com)."
        )
    if path.is_dir():
        return _dataset_json_path(path).parent
    return _extract_msd_archive(path, root)


def foreground_only(slices: list[dict]) -> list[dict]:
    """The slices whose label has foreground (label > 0); ids and keys unchanged.

    The default segmentation metric (:func:`robust_bundles.metrics.slice_dice`) only counts such slices, so evaluating
    attacks on the others costs time and changes nothing.
    """
    return [s for s in slices if np.asarray(s["label"]).max() > 0]
