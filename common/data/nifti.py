"""NIfTI volumes: read an image/label pair with nibabel and check that they belong together; z-score normalisation.

Images are 3D ``(X, Y, Z)`` or, for multi-modality tasks (e.g. MSD Task05_Prostate: T2 and ADC), 4D
``(X, Y, Z, C)`` with the modalities on the last axis as the MSD stores them; a singleton fourth axis is squeezed.
Labels are 3D maps of class indices on the image's voxel grid. Every check names the file and says what to do.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import nibabel as nib
import numpy as np

__all__ = ["load_volume_pair", "zscore", "NIFTI_SUFFIXES"]

NIFTI_SUFFIXES = (".nii.gz", ".nii")


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


def _as_volume(data: np.ndarray, path: Path, role: str, channels_allowed: bool) -> np.ndarray:
    """(X, Y, Z), or (X, Y, Z, C) with C > 1 when ``channels_allowed`` (images); a singleton 4th axis is squeezed."""
    if data.ndim == 4 and data.shape[-1] == 1:
        return data[..., 0]
    if data.ndim == 4 and not channels_allowed:
        raise ValueError(
            f"{role} {_short(path)} has {data.shape[-1]} channels (shape {_fmt_shape(data.shape)}): a label map is "
            f"one 3D volume of class indices; re-save it as 3D or {_REREAD} (file: {path})."
        )
    if data.ndim not in (3, 4):
        more = ", or 4D (X, Y, Z, C) with the modalities on the last axis" if channels_allowed else ""
        raise ValueError(
            f"{role} {_short(path)} has shape {_fmt_shape(data.shape)}: a 3D volume (X, Y, Z) is expected{more}. "
            f"Re-save it or {_REREAD} (file: {path})."
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
        image_path: the image file, 3D, or 4D (X, Y, Z, C) with C modalities (a single channel is squeezed); uint8
            or float storage.
        label_path: the label file on the same voxel grid; integer class indices (float storage is accepted when
            every value is an integer).
        expected_labels: the class indices a label may hold, e.g. ``(0, 1, 2)`` or the ``labels`` dict of
            dataset.json (its keys are used); ``None`` skips the check.

    Returns:
        ``(image, label, affine)``: image float32 ``(X, Y, Z)`` (or ``(X, Y, Z, C)`` for C > 1 modalities) in the
        file's intensity units (scaling from the header applied), label uint8 ``(X, Y, Z)``, affine float64
        ``(4, 4)`` (voxel -> world, mm) of the image.

    Raises:
        FileNotFoundError: a file does not exist.
        ValueError: a file is corrupt or unreadable, a volume is not 3D (the image: or 4D), the shapes or the
            affines (beyond 1e-3) differ, the label holds non-integer or unexpected values, or the image holds
            NaN/inf. Every message names the file(s) and the fix.
    """
    image_path, label_path = Path(image_path), Path(label_path)
    image_raw, affine = _load_nifti(image_path, "image")
    label_raw, label_affine = _load_nifti(label_path, "label")
    image_raw = _as_volume(image_raw, image_path, "image", channels_allowed=True)
    label_raw = _as_volume(label_raw, label_path, "label", channels_allowed=False)
    where = f"(files: {image_path}, {label_path})"

    if image_raw.shape[:3] != label_raw.shape:
        raise ValueError(
            f"image {_short(image_path)} has shape {_fmt_shape(image_raw.shape[:3])} but label {_short(label_path)} has "
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

