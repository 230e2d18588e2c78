"""A small MSD-layout dataset with hippocampus-like anatomy, for tests, quick profiles and the bundles whose real data
is not available (Heart, Prostate): :func:`write_synthetic_msd`, and :func:`synthetic_default` for a bundle's default
``dataset_dir``.

``task="heart"`` or ``task="prostate"`` writes the layout details of the real MSD Task02_Heart / Task05_Prostate
folders (:data:`MSD_TASKS`): their dataset.json fields (name, tensorImageSize, modality, labels, numTraining), their
file names (``la_003.nii.gz``, ``prostate_00.nii.gz``), 4D ``(X, Y, Z, modality)`` images for the two prostate
modalities, and a macOS ``._`` AppleDouble file beside the first image, as the real archives have."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np

from ..io import atomic_write_text
from .nifti import _atomic_save_nifti
from .synthetic import announce_synthetic, is_synthetic, mark_synthetic

__all__ = ["write_synthetic_msd", "synthetic_default", "MSD_TASKS"]

#: dataset.json fields and file names of the real MSD tasks whose images are not on these machines
MSD_TASKS = {
    "heart": {
        "fields": {
            "name": "LeftAtrium",
            "description": "Left atrium segmentation",
            "reference": "King's College London",
            "licence": "CC-BY-SA 4.0",
            "release": "1.0 04/05/2018",
            "tensorImageSize": "3D",
        },
        "modalities": ("MRI",),
        "labels": ("background", "left atrium"),
        "file_name": "la_{:03d}.nii.gz",
    },
    "prostate": {
        "fields": {
            "name": "PROSTATE",
            "description": "Prostate transitional zone and peripheral zone segmentation",
            "reference": "Radboud University, Nijmegen Medical Centre",
            "licence": "CC-BY-SA 4.0",
            "release": "1.0 04/05/2018",
            "tensorImageSize": "4D",
        },
        "modalities": ("T2", "ADC"),
        "labels": ("background", "PZ", "TZ"),
        "file_name": "prostate_{:02d}.nii.gz",
    },
}

#: the first bytes of a macOS AppleDouble file (magic number 0x00051607, version 2)
_APPLEDOUBLE = bytes.fromhex("0005160700020000") + b"Mac OS X        " + bytes(8)

logger = logging.getLogger("robust_bundles.data.msd")


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


def _synthetic_case(
    rng: np.random.Generator, shape: Sequence[int], num_classes: int, num_modalities: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic volume: smooth background, a chain of adjacent ellipsoids (one per foreground class), noise.

    Returns (image float32 in arbitrary MRI-like units, (X, Y, Z), or (X, Y, Z, M) for M > 1 modalities; label uint8
    in 0..num_classes-1). The first modality does not depend on M; every further modality (e.g. ADC beside T2) shows
    the same anatomy with its own contrast (the structures in reverse order of brightness), field, noise and scanner units.
    """
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float64) for s in shape], indexing="ij"))
    # sizes below are for a 35-voxel crop, like the MSD hippocampus; thin stacks of large slices (heart, prostate)
    # scale with their in-plane extent
    scale = (min(shape[:2]) if shape[2] < min(shape[:2]) / 2 else min(shape)) / 35.0
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
    channels = []
    for modality in range(int(num_modalities)):
        means = class_means if modality == 0 else np.concatenate([[0.0], class_means[:0:-1]])
        image = 0.55 * _smooth_field(rng, grid) + means[label]
        image += 0.2 * _smooth_field(rng, grid, waves=4, wavelength=(6.0, 12.0)) * (label > 0)
        image += rng.normal(0.0, 0.4, size=shape)
        gain, offset = rng.uniform(60, 140), rng.uniform(150, 350)  # arbitrary scanner units, removed by zscore
        channels.append(np.clip(image * gain + offset, 0, None).astype(np.float32))
    return (channels[0] if len(channels) == 1 else np.stack(channels, axis=-1)), label


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
    task: str | None = None,
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
        task: ``"heart"`` or ``"prostate"`` (:data:`MSD_TASKS`): the real task's dataset.json fields, labels,
            modalities and file names replace ``name`` and ``labels``; the prostate images are 4D
            ``(X, Y, Z, 2)`` (T2, ADC), and ``imagesTr/`` gets a ``._`` AppleDouble file beside the first case
            (dataset.json does not list it, as in the real archives).

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
    if task is not None and task not in MSD_TASKS:
        raise ValueError(f"task={task!r}: give one of {sorted(MSD_TASKS)} or None.")
    preset = MSD_TASKS.get(task, {})
    labels = preset.get("labels", labels)
    name = preset.get("fields", {}).get("name", name)
    modalities = preset.get("modalities", ("MRI",))
    if len(labels) < 2:
        raise ValueError(f"labels={tuple(labels)}: give the background and at least one foreground class name.")
    params = {
        "generator": "robust_bundles.data.synthetic_msd.write_synthetic_msd",
        "version": 1,
        "num_cases": int(num_cases),
        "shape": list(shape),
        "seed": int(seed),
        "name": str(name),
        "labels": [str(label) for label in labels],
    }
    if task is not None:
        params["task"] = task
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
    file_pattern = preset.get("file_name", _slug(name) + "_{:03d}.nii.gz")
    training = []
    for index in range(1, int(num_cases) + 1):
        rng = np.random.default_rng([int(seed), index])
        image, label = _synthetic_case(rng, shape, len(labels), len(modalities))
        file_name = file_pattern.format(index)
        for folder, array in (("imagesTr", image), ("labelsTr", label)):
            nifti = nib.Nifti1Image(array, affine)
            nifti.header.set_xyzt_units("mm")
            _atomic_save_nifti(nifti, out / folder / file_name)
        training.append({"image": f"./imagesTr/{file_name}", "label": f"./labelsTr/{file_name}"})
    if task is not None:
        (out / "imagesTr" / f"._{file_pattern.format(1)}").write_bytes(_APPLEDOUBLE)

    meta = {
        "name": str(name),
        "description": "Synthetic hippocampus-like volumes (smooth background, adjacent ellipsoids, noise)",
        "reference": "robust-bundles robust_bundles.data.synthetic_msd.write_synthetic_msd",
        "licence": "CC0 (synthetic)",
        "tensorImageSize": "3D",
        "modality": {str(i): str(m) for i, m in enumerate(modalities)},
        "labels": {str(i): str(label) for i, label in enumerate(labels)},
        "numTraining": len(training),
        "numTest": 0,
        "training": training,
        "test": [],
        "synthetic": params,
    }
    if task is not None:
        meta.update(preset["fields"], description=f"SYNTHETIC stand-in for: {preset['fields']['description']}",
                    licence="CC0 (synthetic)")
    mark_synthetic(out, "robust_bundles.data.synthetic_msd.write_synthetic_msd")
    atomic_write_text(json_path, json.dumps(meta, indent=1) + "\n")
    return out


def synthetic_default(out_dir: str | os.PathLike, num_cases: int = 12, **kwargs) -> str:
    """The default ``dataset_dir`` of a bundle: :func:`write_synthetic_msd` (written once), announced loudly.

    Every run on it logs a warning that its numbers say nothing about the real task, and the robustness reports
    say so too (:func:`robust_bundles.data.synthetic.is_synthetic`).
    """
    out = write_synthetic_msd(out_dir, num_cases=num_cases, **kwargs)
    if not is_synthetic(out):  # written by an older version
        mark_synthetic(out, "robust_bundles.data.synthetic_msd.write_synthetic_msd")
    return announce_synthetic(out, "synthetic MSD volumes (robust_bundles.data.synthetic_msd.write_synthetic_msd)")

