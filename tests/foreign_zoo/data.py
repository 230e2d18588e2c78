"""Tiny synthetic data in the layout of each model-zoo bundle of ``../shared/foreign_bundles`` (written by the tests;
no real image). Every writer takes the bundle's temporary copy and a data folder, writes what the bundle's configs and
``docs/README.md`` expect (file names, folders, datalist files, arrays, channels, label values) and returns the
``--dataset_dir`` to give the bundle. The data are learnable in a few seconds of training: labels are bright blobs or
shapes, landmarks move with a bright template.

Each writer is seeded, so the same call writes the same files (the trained-bundle cache keys on the writer's source).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
from foreign_data import write_ct_cases
from PIL import Image

from robust_bundles.data.synthetic import mark_synthetic

__all__ = ["WRITERS"]


def _grid(shape) -> np.ndarray:
    return np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"))


def _ellipsoid(grid: np.ndarray, centre, radii) -> np.ndarray:
    c = np.asarray(centre, dtype=np.float32).reshape(-1, *([1] * (grid.ndim - 1)))
    r = np.asarray(radii, dtype=np.float32).reshape(-1, *([1] * (grid.ndim - 1)))
    return (((grid - c) / r) ** 2).sum(0) <= 1


def _nii(array: np.ndarray, path: Path, spacing=(1.0, 1.0, 1.0)) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.diag([*spacing, 1.0])), str(path))
    return str(path)


def spleen(bundle: Path, root: Path) -> Path:
    """MSD Task09 layout, ``imagesTr``/``labelsTr``: 13 CT-like 32^3 volumes (the bundle trains on all but the last
    9 and validates on those 9)."""
    return write_ct_cases(root, num_cases=13, shape=(32, 32, 32))


def swin_unetr_btcv(bundle: Path, root: Path) -> Path:
    """BTCV layout (``imagesTr/img*.nii.gz``, ``labelsTr/label*.nii.gz``), labels 0..13: three organs (labels 1, 6,
    11) of distinct HU in a soft-tissue body; 12 volumes of 64^3 (SwinUNETR halves the size five times: 64^3 is the
    smallest crop it takes; the bundle validates on the last 9)."""
    rng = np.random.default_rng(1)
    shape = (64, 64, 64)
    grid = _grid(shape)
    body = _ellipsoid(grid, [31.5] * 3, [29] * 3)
    for i in range(12):
        img = np.where(body, -60.0, -1000.0) + rng.normal(0, 10, shape)
        lab = np.zeros(shape, np.uint8)
        for k, (organ, hu) in enumerate(((1, 220.0), (6, 120.0), (11, 30.0))):
            c = [16 + 16 * k + rng.uniform(-3, 3), 31.5 + rng.uniform(-10, 10), 31.5 + rng.uniform(-10, 10)]
            blob = _ellipsoid(grid, c, rng.uniform(7, 10, 3))
            img[blob] = hu + rng.normal(0, 10, int(blob.sum()))
            lab[blob] = organ
        _nii(img.astype(np.float32), root / "imagesTr" / f"img{i:04d}.nii.gz", (1.5, 1.5, 2.0))
        _nii(lab, root / "labelsTr" / f"label{i:04d}.nii.gz", (1.5, 1.5, 2.0))
    mark_synthetic(root, "tests/foreign_zoo/data.py")
    return root


def brats(bundle: Path, root: Path) -> Path:
    """BraTS 2018 layout, ``training/HGG/<case>/<case>_{t1ce,t1,t2,flair,seg}.nii.gz`` (4 aligned MRIs, labels 1
    necrosis, 2 oedema, 4 enhancing tumour), and the datalist ``configs/datalist.json`` of the bundle as its
    ``scripts/prepare_datalist.py`` writes it (``image``: the four modalities t1ce, t1, t2, flair; ``label``: seg), with
    paths relative to the dataset folder; 6 training, 2 validation, 1 test case of 32^3 voxels."""
    rng = np.random.default_rng(2)
    shape = (32, 32, 32)
    grid = _grid(shape)
    brain = _ellipsoid(grid, [15.5] * 3, [14, 13, 12])
    items = []
    # (t1ce, t1, t2, flair) intensities of brain, oedema, enhancing rim, necrosis
    look = {"brain": (100, 100, 100, 100), 2: (110, 90, 220, 260), 4: (300, 110, 160, 200), 1: (60, 70, 250, 180)}
    for i in range(9):
        case = f"Brats18_SYN_{i:03d}_1"
        c = 15.5 + rng.uniform(-4, 4, 3)
        r = rng.uniform(5.5, 7.5)
        seg = np.zeros(shape, np.uint8)
        seg[_ellipsoid(grid, c, [r] * 3)] = 2
        seg[_ellipsoid(grid, c, [0.65 * r] * 3)] = 4
        seg[_ellipsoid(grid, c, [0.35 * r] * 3)] = 1
        folder = root / "training" / "HGG" / case
        for m, mod in enumerate(("t1ce", "t1", "t2", "flair")):
            img = np.where(brain, look["brain"][m], 0.0)
            for value in (2, 4, 1):
                img = np.where(seg == value, look[value][m], img)
            img = np.where(brain, img + rng.normal(0, 15, shape), 0.0)
            _nii(img.astype(np.float32), folder / f"{case}_{mod}.nii.gz")
        _nii(seg, folder / f"{case}_seg.nii.gz")
        rel = f"training/HGG/{case}/{case}"
        items.append({"label": f"{rel}_seg.nii.gz", "image": [f"{rel}_{m}.nii.gz" for m in ("t1ce", "t1", "t2", "flair")]})
    datalist = {"training": items[:6], "validation": items[6:8], "testing": items[8:]}
    (bundle / "configs" / "datalist.json").write_text(json.dumps(datalist, indent=1))
    mark_synthetic(root, "tests/foreign_zoo/data.py")
    return root


def prostate_mri_anatomy(bundle: Path, root: Path) -> Path:
    """Prostate158 layout: ``train.csv`` and ``valid.csv`` with the columns ``t2`` and ``t2_anatomy_reader1`` (paths
    relative to the dataset folder, which the bundle joins without a separator: give it with a trailing ``/``);
    labels 1 transition zone (inner), 2 peripheral zone (shell); 0.5 mm voxels, 32^3; 5 training, 2 validation."""
    rng = np.random.default_rng(3)
    shape = (32, 32, 32)
    grid = _grid(shape)
    rows = []
    for i in range(7):
        case = f"{i:03d}"
        c = 15.5 + rng.uniform(-3, 3, 3)
        r = rng.uniform(8, 10, 3)
        lab = np.zeros(shape, np.uint8)
        lab[_ellipsoid(grid, c, r)] = 2
        lab[_ellipsoid(grid, c, 0.6 * r)] = 1
        img = np.choose(lab, [300.0, 700.0, 450.0]) + rng.normal(0, 40, shape)
        _nii(img.astype(np.float32), root / case / "t2.nii.gz", (0.5, 0.5, 0.5))
        _nii(lab, root / case / "t2_anatomy_reader1.nii.gz", (0.5, 0.5, 0.5))
        rows.append({"ID": case, "t2": f"{case}/t2.nii.gz", "t2_anatomy_reader1": f"{case}/t2_anatomy_reader1.nii.gz"})
    for name, part in (("train.csv", rows[:5]), ("valid.csv", rows[5:])):
        with open(root / name, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(part)
    mark_synthetic(root, "tests/foreign_zoo/data.py")
    return root


def endoscopic_tool(bundle: Path, root: Path) -> Path:
    """The endoscopic tool layout: ``train/<video>/<frame>.jpg`` (RGB) with ``<frame>_seg.jpg`` (0 background,
    255 tool) beside it, and the same under ``val/``; frame names must not end in s, e or g (the bundle's glob
    ``*[!seg].jpg``). A bright greenish bar (the tool) on a reddish background; 64 x 64 frames, 20 training, 3
    validation."""
    rng = np.random.default_rng(4)
    yy, xx = np.mgrid[:64, :64].astype(np.float32)
    for split, videos, frames in (("train", 4, 5), ("val", 1, 3)):
        for v in range(videos):
            for f in range(frames):
                angle = rng.uniform(0, np.pi)
                cy, cx = rng.uniform(20, 44, 2)
                dist = np.abs((yy - cy) * np.cos(angle) - (xx - cx) * np.sin(angle))
                tool = dist < rng.uniform(6, 9)
                img = np.stack([150 + 0 * yy, 60 + 0 * yy, 50 + 0 * yy], -1) + rng.normal(0, 12, (64, 64, 3))
                img[tool] = [190, 200, 190]
                folder = root / split / f"video_{v:02d}"
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"frame_{f:03d}.jpg", quality=95)
                Image.fromarray((tool * 255).astype(np.uint8)).save(folder / f"frame_{f:03d}_seg.jpg", quality=100)
    mark_synthetic(root, "tests/foreign_zoo/data.py")
    return root


def classification_template(bundle: Path, root: Path) -> Path:
    """The template's own layout (its ``docs/generate_data.ipynb``): ``<bundle>/data/train_data/img##.nii.gz`` 2D
    images and ``<bundle>/data/train_samples.json``, a list of ``{"image": path, "label": class}``; classes 0 empty,
    1 disk, 2 triangle, 3 square, 40 images of 64 x 64 (the bundle splits them 4:1). ``root`` is not used: the
    bundle reads its data inside its own folder; it is returned as the dataset folder anyway."""
    rng = np.random.default_rng(5)
    out = bundle / "data" / "train_data"
    out.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:64, :64].astype(np.float32)
    samples = []
    for i in range(40):
        label = i % 4
        cy, cx = rng.uniform(22, 42, 2)
        s = rng.uniform(9, 14)
        shape = [np.zeros_like(yy, bool),
                 (yy - cy) ** 2 + (xx - cx) ** 2 <= s ** 2,
                 (yy - cy <= s) & (yy - cy >= -s) & (np.abs(xx - cx) <= (yy - cy + s) / 2),
                 (np.abs(yy - cy) <= s) & (np.abs(xx - cx) <= s)][label]
        img = shape.astype(np.float32) + rng.normal(0, 0.05, yy.shape).astype(np.float32)
        path = _nii(img, out / f"img{i:02}.nii.gz")
        samples.append({"image": path, "label": label})
    (bundle / "data" / "train_samples.json").write_text(json.dumps(samples, indent=2))
    mark_synthetic(bundle / "data", "tests/foreign_zoo/data.py")
    return bundle / "data"


VALVE_VALUES = (10, 15, 20, 25, 30, 35, 100, 150, 200, 250)  # the landmark values of scripts/valve_landmarks.py


def valve_landmarks(bundle: Path, root: Path, size: int = 64) -> Path:
    """``valvelandmarks.npz`` with ``trainImgs``/``trainLMImgs`` and ``testImgs``/``testLMImgs`` (N, H, W) stacks,
    no channel; a landmark image is 0 except one pixel per landmark holding its value (10, 15, ... 250). The ten
    landmarks are a fixed ring moved by a random shift per image, and the image a bright ring there: 48 training and
    8 test images of ``size`` x ``size``."""
    rng = np.random.default_rng(6)
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    angles = np.linspace(0, 2 * np.pi, len(VALVE_VALUES), endpoint=False)
    ring = np.stack([np.sin(angles), np.cos(angles)], 1) * size * 0.25

    def draw(n):
        imgs = np.zeros((n, size, size), np.float32)
        lms = np.zeros((n, size, size), np.int32)
        for i in range(n):
            pts = np.round(ring + size / 2 + rng.uniform(-size / 8, size / 8, 2)).astype(int)
            for (y, x), value in zip(pts, VALVE_VALUES):
                imgs[i] += np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / 4.0) * (0.5 + value / 500)
                lms[i, y, x] = value
            imgs[i] += rng.normal(0, 0.05, (size, size))
        return imgs, lms

    train, test = draw(48), draw(8)
    root.mkdir(parents=True, exist_ok=True)
    np.savez(root / "valvelandmarks.npz", trainImgs=train[0], trainLMImgs=train[1], testImgs=test[0],
             testLMImgs=test[1])
    mark_synthetic(root, "tests/foreign_zoo/data.py")
    return root


def lung_nodule_ct_detection(bundle: Path, root: Path) -> Path:
    """LUNA16 resampled layout: ``<dataset>/subset0/<case>.nii.gz`` CT volumes (0.703125 x 0.703125 x 1.25 mm) and
    the bundle's datalist ``LUNA16_datasplit/dataset_fold0.json`` (``training``: ``image`` relative to the dataset,
    ``box`` one ``[cx, cy, cz, w, h, d]`` per nodule in world coordinates (mm, LPS as in LUNA16), ``label`` 0 per box).
    One bright sphere (nodule) per case in a lung-like volume of 64 x 64 x 32; 10 cases (the bundle validates on the
    last 5 %, here the last one)."""
    rng = np.random.default_rng(7)
    shape = (64, 64, 32)
    spacing = (0.703125, 0.703125, 1.25)
    grid = _grid(shape)
    items = []
    for i in range(10):
        c = np.array([rng.uniform(18, 46), rng.uniform(18, 46), rng.uniform(10, 22)])
        r_mm = rng.uniform(4, 6)
        nodule = _ellipsoid(grid, c, [r_mm / s for s in spacing])
        img = np.full(shape, -850.0) + rng.normal(0, 30, shape)
        img[nodule] = 40 + rng.normal(0, 30, int(nodule.sum()))
        rel = f"subset0/case_{i:03d}.nii.gz"
        _nii(img.astype(np.float32), root / rel, spacing)
        # world coordinates of the voxel centre under NIfTI's RAS affine, given in LPS as LUNA16 does (x, y negated)
        ras = c * np.array(spacing)
        centre = [-ras[0], -ras[1], ras[2]]
        items.append({"image": rel, "box": [[*map(float, centre), 2 * r_mm, 2 * r_mm, 2 * r_mm]], "label": [0]})
    out = bundle / "LUNA16_datasplit"
    out.mkdir(parents=True, exist_ok=True)
    (out / "dataset_fold0.json").write_text(json.dumps({"training": items, "validation": items[-1:]}, indent=1))
    mark_synthetic(root, "tests/foreign_zoo/data.py")
    return root


WRITERS: dict[str, Callable[[Path, Path], Path]] = {
    "spleen_ct_segmentation": spleen,
    "brats_mri_segmentation": brats,
    "swin_unetr_btcv_segmentation": swin_unetr_btcv,
    "prostate_mri_anatomy": prostate_mri_anatomy,
    "endoscopic_tool_segmentation": endoscopic_tool,
    "classification_template": classification_template,
    "valve_landmarks": valve_landmarks,
    "lung_nodule_ct_detection": lung_nodule_ct_detection,
}
