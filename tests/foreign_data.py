"""Small synthetic CT-like volumes in the MSD layout, for the foreign-bundle tests (written by the tests; no real CT).

Each case: a soft-tissue body (about 40 HU, noise 20 HU) in air (-1000 HU), and a bright ellipsoid "organ" (130 HU)
at a random place; the label is the ellipsoid. Spacing 1.5 x 1.5 x 2.0 mm, the spleen bundle's target spacing, so
its Spacingd keeps the size.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from robust_bundles.data.synthetic import mark_synthetic

SPACING = (1.5, 1.5, 2.0)


def write_ct_cases(folder: str | Path, num_cases: int = 6, shape=(48, 48, 40), seed: int = 0) -> Path:
    """Write ``imagesTr/spleen_<i>.nii.gz`` and ``labelsTr/spleen_<i>.nii.gz``; return the dataset folder."""
    root = Path(folder)
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    affine = np.diag([*SPACING, 1.0])
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"))
    centre = (np.array(shape, dtype=np.float32) - 1) / 2
    body = (((grid - centre[:, None, None, None]) / (0.45 * np.array(shape))[:, None, None, None]) ** 2).sum(0) <= 1
    for i in range(num_cases):
        img = np.where(body, 40.0, -1000.0) + rng.normal(0, 20, shape)
        c = centre + rng.uniform(-0.15, 0.15, 3) * np.array(shape)
        radii = rng.uniform(0.12, 0.2, 3) * np.array(shape)
        organ = (((grid - c[:, None, None, None]) / radii[:, None, None, None]) ** 2).sum(0) <= 1
        img = np.where(organ, 130.0 + rng.normal(0, 20, shape), img).astype(np.float32)
        nib.save(nib.Nifti1Image(img, affine), str(root / "imagesTr" / f"spleen_{i}.nii.gz"))
        nib.save(nib.Nifti1Image(organ.astype(np.uint8), affine), str(root / "labelsTr" / f"spleen_{i}.nii.gz"))
    mark_synthetic(root, "tests/foreign_data.py")
    return root


def write_disks(folder: str | Path, n: int = 12, size: int = 24) -> Path:
    """``images/disk_<i>.nii.gz`` (a bright disk in noise) and ``labels/disk_<i>.nii.gz`` (the disk)."""
    folder = Path(folder)
    rng = np.random.default_rng(0)
    for sub in ("images", "labels"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        cy, cx = rng.uniform(7, size - 7, 2)
        disk = ((yy - cy) ** 2 + (xx - cx) ** 2) <= rng.uniform(3, 5) ** 2
        img = (rng.normal(0.3, 0.15, (size, size)) + 0.6 * disk).astype(np.float32)
        nib.save(nib.Nifti1Image(img, np.eye(4)), str(folder / "images" / f"disk_{i:02d}.nii.gz"))
        nib.save(nib.Nifti1Image(disk.astype(np.uint8), np.eye(4)), str(folder / "labels" / f"disk_{i:02d}.nii.gz"))
    return folder


def write_bundle(folder: str | Path, train_yaml: str, files: dict[str, str] | None = None) -> Path:
    """A bundle folder: ``configs/train.yaml``, an empty ``models/``, and ``files`` (relative path -> text)."""
    bundle = Path(folder)
    (bundle / "configs").mkdir(parents=True)
    (bundle / "models").mkdir()
    (bundle / "configs" / "train.yaml").write_text(train_yaml)
    for rel, text in (files or {}).items():
        (bundle / rel).parent.mkdir(parents=True, exist_ok=True)
        (bundle / rel).write_text(text)
    return bundle
