"""ISBI 2015 cephalometric X-rays (Wang et al., Medical Image Analysis 31, 2016) -> landmark samples with stable ids.

Two layouts are read, as users have them:

- **official** (the challenge's distribution): ``RawImage/{TrainingData,Test1Data,Test2Data}/NNN.bmp`` and
  ``AnnotationsByMD/{400_senior,400_junior}/NNN.txt`` (19 lines ``x,y`` in pixels, then other lines that are not
  landmarks). The ground truth is the mean of the two doctors' annotations.
- **csv** (e.g. ``../shared/data/isbi2015_ceph``): ``cepha400/NNN.jpg`` (grey stored as RGB) and one CSV per set and
  doctor, ``train_senior.csv`` (the official training set), ``test1_senior.csv`` (Test1), optionally
  ``test2_*.csv`` and ``*_junior.csv``; header ``image_path,1_x,1_y,...,19_x,19_y``. The annotations of the doctors
  present are averaged (this copy has the senior doctor only).

Images are 1935 x 2400 pixels (width x height) of 0.1 mm. Landmarks are ``(x, y)`` = (column, row) in pixels of the
original image.

Splits (:func:`split_ceph`), as the paper: train = the official training set (images 1-150); Test1 (151-300) is cut
with a fixed seed into validation (a third: 50 images) and test (100 images); ``test2`` is the official Test2 when
present. :func:`load_ceph` reads one split: the images resized to the network input (default 200 x 160, the paper's),
grey levels in [0, 1], with their landmarks, pixel spacing, original size and a stable ``sample_id`` (over the case
name). Reading is fast: a JPEG is decoded at a reduced scale (``draft``) no smaller than twice the target size before
the antialiased resize.

Also here: :func:`write_synthetic_ceph` (a small dataset in either layout for tests and the bundle's default data),
:class:`LoadXrayd` and :func:`xray_datalist` (images for inference).
"""

from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path
from typing import Any, Hashable, Mapping, Sequence

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform

from ..io import atomic_write, atomic_write_text, decompression_bomb_message
from ..transforms import assign_sample_ids, datalist_digest, refuse_uninformative
from .splits import first_cases
from .synthetic import announce_synthetic, mark_synthetic

__all__ = [
    "LANDMARK_NAMES",
    "NUM_LANDMARKS",
    "PIXEL_SPACING_MM",
    "SETS",
    "SPLITS",
    "detect_layout",
    "read_ceph_datalist",
    "split_ceph",
    "read_xray",
    "grey_levels",
    "load_ceph",
    "ceph_digest",
    "xray_datalist",
    "LoadXrayd",
    "write_synthetic_ceph",
    "synthetic_default",
]

logger = logging.getLogger("robust_bundles.ceph")

LANDMARK_NAMES = (
    "sella", "nasion", "orbitale", "porion", "subspinale", "supramentale", "pogonion", "menton", "gnathion", "gonion",
    "lower incisal incision", "upper incisal incision", "upper lip", "lower lip", "subnasale", "soft tissue pogonion",
    "posterior nasal spine", "anterior nasal spine", "articulare",
)
"""The 19 landmarks of the challenge, in annotation order."""
NUM_LANDMARKS = len(LANDMARK_NAMES)
PIXEL_SPACING_MM = 0.1
"""mm per pixel of the original 1935 x 2400 images (both axes)."""
SETS = ("train", "test1", "test2")
"""The official sets: TrainingData (1-150), Test1Data (151-300), Test2Data (301-400)."""
SPLITS = ("train", "validation", "test", "test2")

_OFFICIAL_FOLDERS = {"train": "TrainingData", "test1": "Test1Data", "test2": "Test2Data"}
_DOCTORS = ("senior", "junior")
_IMAGE_SUFFIXES = (".bmp", ".jpg", ".jpeg", ".png", ".tif", ".tiff")
_LAYOUTS = (
    "the official layout (RawImage/TrainingData/001.bmp ..., AnnotationsByMD/400_senior/001.txt ...) or the CSV layout "
    "(cepha400/001.jpg ..., train_senior.csv, test1_senior.csv)"
)


# ------------------------------------------------------------------------------------------------------------ layout
def detect_layout(dataset_dir: str | os.PathLike) -> str:
    """``"official"`` or ``"csv"``; a FileNotFoundError that says what the folder should hold otherwise."""
    root = Path(dataset_dir).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"The cephalometric dataset folder {root} does not exist: set --dataset_dir to {_LAYOUTS}.")
    if (root / "RawImage").is_dir() and (root / "AnnotationsByMD").is_dir():
        return "official"
    if any(root.glob("*_senior.csv")) or any(root.glob("*_junior.csv")):
        return "csv"
    hint = ""
    for child in sorted(p for p in root.iterdir() if p.is_dir()):
        if (child / "RawImage").is_dir() or any(child.glob("*_senior.csv")):
            hint = f" (did you mean {child}?)"
            break
    raise FileNotFoundError(f"{root} is not an ISBI 2015 cephalometric dataset{hint}: expected {_LAYOUTS}.")


def _case_of(name: str) -> str:
    return Path(name).name.rsplit(".", 1)[0]


def _read_txt(path: Path, num_landmarks: int) -> np.ndarray:
    """The first ``num_landmarks`` lines ``x,y`` of an official annotation file, as float64 (L, 2)."""
    if not path.is_file():
        raise FileNotFoundError(
            f"The annotation {path} does not exist: every image needs one file per doctor in AnnotationsByMD/"
            f"400_senior and 400_junior; restore it, or remove the image."
        )
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    points = []
    for number, line in enumerate(lines[:num_landmarks], 1):
        parts = line.replace(";", ",").split(",")
        try:
            x, y = float(parts[0]), float(parts[1])
        except (IndexError, ValueError):
            raise ValueError(
                f"{path} line {number} is {line!r}: the first {num_landmarks} lines of an annotation are 'x,y' pixel "
                f"coordinates of the landmarks."
            ) from None
        points.append((x, y))
    if len(points) < num_landmarks:
        raise ValueError(f"{path} has {len(points)} landmark lines; {num_landmarks} are needed ('x,y' per line).")
    return np.asarray(points, dtype=np.float64)


def _read_official(root: Path, num_landmarks: int, doctors: Sequence[str]) -> list[dict]:
    items = []
    for set_name, folder in _OFFICIAL_FOLDERS.items():
        image_dir = root / "RawImage" / folder
        if not image_dir.is_dir():
            continue
        for image in sorted(p for p in image_dir.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES and p.is_file()):
            case = _case_of(image.name)
            have = [d for d in doctors if (root / "AnnotationsByMD" / f"400_{d}").is_dir()]
            if not have:
                raise FileNotFoundError(
                    f"{root / 'AnnotationsByMD'} holds none of the folders {[f'400_{d}' for d in doctors]}: the "
                    f"official layout has AnnotationsByMD/400_senior and 400_junior."
                )
            points = [_read_txt(root / "AnnotationsByMD" / f"400_{d}" / f"{case}.txt", num_landmarks) for d in have]
            items.append({"image": str(image), "case": case, "set": set_name,
                          "landmarks": np.mean(points, axis=0), "annotators": have})
    if not items:
        raise FileNotFoundError(f"{root / 'RawImage'} holds no image in {list(_OFFICIAL_FOLDERS.values())}: "
                                f"expected {_LAYOUTS}.")
    return items


def _find_image(root: Path, name: str, csv_path: Path) -> Path:
    for candidate in (root / "cepha400" / name, root / name, csv_path.parent / name):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"{csv_path.name} lists the image {name!r}, which is neither in {root / 'cepha400'} nor in {root}: restore "
        f"the image or remove its row."
    )


def _read_csv_file(path: Path, root: Path, num_landmarks: int) -> dict[str, tuple[Path, np.ndarray]]:
    out = {}
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        need = ["image_path"] + [f"{i}_{c}" for i in range(1, num_landmarks + 1) for c in ("x", "y")]
        missing = [c for c in need if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path} lacks the columns {missing[:4]}{'...' if len(missing) > 4 else ''}: the header is "
                             f"image_path,1_x,1_y,...,{num_landmarks}_x,{num_landmarks}_y.")
        for number, row in enumerate(reader, 2):
            try:
                pts = np.asarray([[float(row[f"{i}_x"]), float(row[f"{i}_y"])] for i in range(1, num_landmarks + 1)])
            except (TypeError, ValueError):
                raise ValueError(f"{path} line {number} ({row.get('image_path')}) has a coordinate that is not a "
                                 f"number.") from None
            image = _find_image(root, row["image_path"], path)
            out[_case_of(image.name)] = (image, pts)
    return out


def _read_csv_layout(root: Path, num_landmarks: int, doctors: Sequence[str]) -> list[dict]:
    by_case: dict[str, dict] = {}
    for set_name in SETS:
        for doctor in doctors:
            path = root / f"{set_name}_{doctor}.csv"
            if not path.is_file():
                continue
            for case, (image, pts) in _read_csv_file(path, root, num_landmarks).items():
                item = by_case.setdefault(case, {"image": str(image), "case": case, "set": set_name, "points": {},
                                                 "annotators": []})
                if item["set"] != set_name:
                    raise ValueError(f"Image {case} is listed in two sets ({item['set']} and {set_name}): each image "
                                     f"belongs to one official set.")
                item["points"][doctor] = pts
                item["annotators"].append(doctor)
    if not by_case:
        raise FileNotFoundError(f"{root} holds no CSV of {[f'<set>_{d}.csv' for d in doctors]} for the sets {SETS}.")
    items = []
    for case in sorted(by_case):
        item = by_case[case]
        item["landmarks"] = np.mean(list(item.pop("points").values()), axis=0)
        items.append(item)
    return items


def read_ceph_datalist(dataset_dir: str | os.PathLike, num_landmarks: int = NUM_LANDMARKS,
                       annotators: Sequence[str] | None = None) -> list[dict]:
    """Every annotated image of a dataset folder in either layout, sorted by case; no image is opened.

    Args:
        dataset_dir: the dataset folder (see the module docstring).
        num_landmarks: landmarks per image.
        annotators: the doctors whose annotations are averaged ("senior", "junior"); default all present.

    Returns:
        Dicts ``{"image": path, "case": "001", "set": "train" | "test1" | "test2", "landmarks": float64 (L, 2) as
        (x, y) pixels, "annotators": [...]}``.
    """
    root = Path(dataset_dir).expanduser()
    doctors = tuple(annotators) if annotators is not None else _DOCTORS
    unknown = [d for d in doctors if d not in _DOCTORS]
    if unknown:
        raise ValueError(f"annotators {unknown} unknown: use {_DOCTORS}.")
    layout = detect_layout(root)
    items = _read_official(root, num_landmarks, doctors) if layout == "official" else \
        _read_csv_layout(root, num_landmarks, doctors)
    items.sort(key=lambda i: i["case"])
    cases = [i["case"] for i in items]
    if len(set(cases)) != len(cases):
        dup = sorted({c for c in cases if cases.count(c) > 1})
        raise ValueError(f"Images {dup[:5]} appear more than once in {root}: case names must be unique.")
    return items


# ------------------------------------------------------------------------------------------------------------ splits
def split_ceph(datalist: Sequence[Mapping], validation_fraction: float = 1 / 3, seed: int = 0) -> dict[str, list]:
    """The paper's split: ``train`` = official training set; Test1 cut into ``validation`` and ``test`` with a
    fixed seed (a third to validation: 50 of 150 images); ``test2`` = official Test2.

    Args:
        datalist: items of :func:`read_ceph_datalist`.
        validation_fraction: the share of Test1 for validation, in [0, 1); at least one image each when Test1 has two.
        seed: seed of the permutation of Test1 (by sorted case name, so the input order does not matter).

    Returns:
        ``{"train": [...], "validation": [...], "test": [...], "test2": [...]}``, each sorted by case.
    """
    if not 0 <= validation_fraction < 1:
        raise ValueError(f"validation_fraction={validation_fraction}: give a fraction in [0, 1).")
    by_set: dict[str, list] = {s: sorted((i for i in datalist if i["set"] == s), key=lambda i: i["case"]) for s in SETS}
    test1 = by_set["test1"]
    n_val = int(round(len(test1) * validation_fraction))
    if validation_fraction > 0 and len(test1) >= 2:
        n_val = min(max(n_val, 1), len(test1) - 1)
    order = np.random.default_rng(seed).permutation(len(test1))
    val = sorted((test1[i] for i in order[:n_val]), key=lambda i: i["case"])
    test = sorted((test1[i] for i in order[n_val:]), key=lambda i: i["case"])
    return {"train": by_set["train"], "validation": val, "test": test, "test2": by_set["test2"]}


# ------------------------------------------------------------------------------------------------------------ images
_EIGHT_BIT_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr")
"""PIL modes of 8 bits per channel: converted to grey (ITU-R 601 luma) and divided by 255, as the training images."""
_DEEP_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
"""PIL modes of one deeper grey channel (16-bit and 32-bit integers, 32-bit float): read at their full range."""


def grey_levels(values: np.ndarray, path: str | os.PathLike = "the image") -> np.ndarray:
    """Grey levels of a 16-bit, 32-bit integer or float image in [0, 1], scaled as the 8-bit training images were.

    The training images are 8-bit, each stored value divided by 255, the largest value of 8 bits (not stretched to the
    image's own minimum and maximum). A deeper image is scaled the same way, by the largest value of its bit depth:
    ``2^b - 1`` with ``b`` the bits its largest value needs, rounded up to an even number and at least 8 (detectors
    store 10, 12, 14 or 16 bits). A 16-bit image made of 8-bit values times 257 thus reads exactly as the 8-bit one, and
    a 12-bit image (largest value 4095 or less) is divided by 4095. Floats already in [0, 1] are taken as they are;
    larger floats are scaled as integers of the same range.

    Args:
        values: the image's values (any shape), integers >= 0 or floats.
        path: the file, for the messages.

    Raises:
        ValueError: negative or non-finite values (the scale of such an image is unknown).
    """
    v = np.asarray(values, dtype=np.float64)
    if not np.isfinite(v).all():
        raise ValueError(f"The image {path} has {int((~np.isfinite(v)).sum())} non-finite pixel(s) (NaN or inf): a "
                         f"prediction on it would be wrong. Repair or replace the file; nothing was written for it.")
    low, high = (float(v.min()), float(v.max())) if v.size else (0.0, 0.0)
    if low < 0:
        raise ValueError(f"The image {path} has negative grey levels (down to {low:g}): an X-ray's grey levels are >= 0 "
                         f"and this reader cannot know their scale. Export it as 8- or 16-bit greyscale (PNG, TIFF).")
    if np.issubdtype(np.asarray(values).dtype, np.floating) and high <= 1.0:
        return v.astype(np.float32)
    bits = max(8, int(np.ceil(high)).bit_length())
    bits += bits % 2
    return (v / float(2**bits - 1)).astype(np.float32)


def read_xray(path: str | os.PathLike, size: Sequence[int] | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """A grey image in [0, 1], optionally resized, and its original (height, width).

    Images of 8 bits per channel (BMP, JPEG, PNG, TIFF; RGB is converted to grey, ITU-R 601 luma) are divided by 255,
    as in training. Greyscale images of 16 bits (PIL modes ``I;16``, ``I;16B``, ...), 32-bit integers (``I``) and
    floats (``F``) keep their full dynamic range and are scaled by :func:`grey_levels`. Other modes are refused.

    Args:
        path: a BMP, JPEG, PNG or TIFF file.
        size: (H, W) to resize to (antialiased bilinear); None keeps the original size.

    Returns:
        ``(image float32 (H, W), (H0, W0))``.

    Raises:
        ValueError: the file is not a readable image, its mode is unknown, or its grey levels are negative or not finite.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"The image {path} does not exist.")
    try:
        with Image.open(path) as im:
            w0, h0 = im.size
            if im.mode in _EIGHT_BIT_MODES:
                if size is not None:
                    im.draft("L", (2 * int(size[1]), 2 * int(size[0])))  # JPEG: decode reduced, >= twice the target
                grey, scale = im.convert("L"), 255.0
            elif im.mode in _DEEP_MODES:
                grey, scale = Image.fromarray(grey_levels(np.asarray(im), path)), 1.0
            else:
                raise ValueError(
                    f"The image {path} has the PIL mode {im.mode!r}, which this reader does not know (it reads "
                    f"{', '.join(_EIGHT_BIT_MODES)} of 8 bits and the greyscale modes {', '.join(_DEEP_MODES)}): save it "
                    f"as 8- or 16-bit greyscale PNG or TIFF."
                )
            if size is not None:
                grey = grey.resize((int(size[1]), int(size[0])), Image.BILINEAR)
            array = np.asarray(grey, dtype=np.float32) / scale
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ValueError(f"The image {path} cannot be read ({type(exc).__name__}: {exc}): it is corrupt or not an "
                         f"image; restore it from the dataset.") from exc
    except Image.DecompressionBombError as exc:
        raise ValueError(decompression_bomb_message(path, exc, Image.MAX_IMAGE_PIXELS)) from None
    return array, (h0, w0)


def _check_inside(item: Mapping, orig: tuple[int, int]) -> None:
    pts = item["landmarks"]
    h0, w0 = orig
    bad = [j + 1 for j, (x, y) in enumerate(pts) if not (-0.5 <= x <= w0 - 0.5 and -0.5 <= y <= h0 - 0.5)]
    if bad:
        raise ValueError(f"Landmarks {bad} of image {item['image']} lie outside the image ({w0} x {h0} pixels): the "
                         f"annotation does not belong to this image, or its x and y are swapped.")


def load_ceph(
    dataset_dir: str | os.PathLike,
    split: str = "train",
    image_size: Sequence[int] = (200, 160),
    validation_fraction: float = 1 / 3,
    seed: int = 0,
    max_cases: int | None = None,
    pixel_spacing: Sequence[float] | float = PIXEL_SPACING_MM,
    num_landmarks: int = NUM_LANDMARKS,
    annotators: Sequence[str] | None = None,
) -> list[dict]:
    """The samples of one split, images resized and in memory, with stable ids.

    Args:
        dataset_dir: the dataset folder, either layout.
        split: "train", "validation", "test", "test2" (:func:`split_ceph`) or "all".
        image_size: (H, W) of the network input (the paper: 200 x 160).
        validation_fraction: the share of Test1 for validation.
        seed: seed of the Test1 split.
        max_cases: keep the first n images of the split (by case), for quick profiles and tests.
        pixel_spacing: mm per original pixel, (x, y) or one number.
        num_landmarks: landmarks per image.
        annotators: doctors to average (default all present).

    Returns:
        Dicts ``{"image": float32 (1, H, W) in [0, 1], "landmarks": float32 (L, 2) original pixels (x, y),
        "spacing": float32 (2,) mm per pixel (x, y), "orig_size": int64 (2,) (H0, W0), "case": str, "sample_id": int}``
        with ids 0..N-1 over the sorted case names (:func:`ceph_digest` gives their digest).
    """
    items = read_ceph_datalist(dataset_dir, num_landmarks, annotators)
    if split == "all":
        chosen = items
    elif split in SPLITS:
        chosen = split_ceph(items, validation_fraction, seed)[split]
    else:
        raise ValueError(f"split={split!r}: use one of {SPLITS + ('all',)}.")
    chosen = first_cases(chosen, max_cases, "images")
    if not chosen:
        raise ValueError(f"The {split!r} split of {dataset_dir} is empty: check the dataset's sets ({SETS}).")
    spacing = np.broadcast_to(np.asarray(pixel_spacing, dtype=np.float32), (2,)).copy()
    samples = []
    for item in chosen:
        image, orig = read_xray(item["image"], image_size)
        _check_inside(item, orig)
        samples.append({
            "image": image[None],
            "landmarks": np.asarray(item["landmarks"], dtype=np.float32),
            "spacing": spacing.copy(),
            "orig_size": np.asarray(orig, dtype=np.int64),
            "case": item["case"],
        })
    samples, _ = assign_sample_ids(samples, ("case",))
    logger.info("%s split: %d images of %s, resized to %s", split, len(samples), dataset_dir, tuple(image_size))
    return samples


def ceph_digest(samples: Sequence[Mapping]) -> str:
    """The digest of a list of samples (sha256 of their sorted case names): store it with the margins."""
    return datalist_digest(samples, ("case",))


# --------------------------------------------------------------------------------------------------------- inference
def xray_datalist(source: Any) -> list[dict]:
    """The ``[{"image": path}, ...]`` list of an inference run, from a folder or a list of paths/dicts.

    Args:
        source: a folder (every BMP, JPEG, PNG or TIFF file in it, sorted; ``._`` files skipped), a list of paths, or
            a list of dicts with an ``"image"`` path.
    """
    if isinstance(source, (str, os.PathLike)):
        folder = Path(source).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"The input folder {folder} does not exist: set --input_dir to a folder of X-ray "
                                    f"images (.bmp, .jpg, .png), or give --datalist \"['path/to/image.bmp']\".")
        files = sorted(p for p in folder.iterdir()
                       if p.suffix.lower() in _IMAGE_SUFFIXES and not p.name.startswith("._") and p.is_file())
        if not files:
            raise FileNotFoundError(f"The input folder {folder} holds no image ({', '.join(_IMAGE_SUFFIXES)}): set "
                                    f"--input_dir to a folder of X-ray images, or give --datalist.")
        return [{"image": str(p)} for p in files]
    if not isinstance(source, (list, tuple)) or not source:
        raise ValueError(f"The inference input {source!r} is neither a folder nor a non-empty list: give --input_dir "
                         f"FOLDER or --datalist \"['path/to/image.bmp']\".")
    items = []
    for index, item in enumerate(source):
        item = {"image": item} if isinstance(item, (str, os.PathLike)) else item
        if not (isinstance(item, Mapping) and isinstance(item.get("image"), (str, os.PathLike))):
            raise ValueError(f"Item {index} of the inference datalist is {item!r}: give an image path or a dict "
                             f"{{'image': path}}.")
        if not Path(item["image"]).is_file():
            raise FileNotFoundError(f"The input image {item['image']} does not exist: fix the path in --datalist.")
        items.append({**item, "image": str(item["image"])})
    return items


class LoadXrayd(MapTransform):
    """Load an X-ray for the network: ``image`` (1, H, W) in [0, 1] resized to ``image_size`` (:func:`read_xray`: 8-bit,
    16-bit, 32-bit integer and float images), plus ``orig_size`` (H0, W0), ``spacing`` (x, y) mm and ``image_path``
    (the file), which the landmark writer needs. A blank image (one grey level everywhere) is refused
    (:func:`robust_bundles.transforms.refuse_uninformative`).

    Args:
        keys: the key holding the image path.
        image_size: (H, W) of the network input.
        pixel_spacing: mm per original pixel, (x, y) or one number.
    """

    def __init__(self, keys: KeysCollection = "image", image_size: Sequence[int] = (200, 160),
                 pixel_spacing: Sequence[float] | float = PIXEL_SPACING_MM, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.image_size = tuple(int(s) for s in image_size)
        self.spacing = np.broadcast_to(np.asarray(pixel_spacing, dtype=np.float32), (2,)).copy()

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            path = str(d[key])
            image, orig = read_xray(path, self.image_size)
            refuse_uninformative(image[None], path)
            d[key] = image[None]
            d[f"{key}_path"] = path
            d["orig_size"] = np.asarray(orig, dtype=np.int64)
            d["spacing"] = self.spacing.copy()
        return d


# --------------------------------------------------------------------------------------------------------- synthetic
def _template(num_landmarks: int, rng: np.random.Generator) -> np.ndarray:
    """Landmark positions in [0, 1]^2 (x, y), spread over the face region of a lateral cephalogram."""
    return np.stack([rng.uniform(0.3, 0.85, num_landmarks), rng.uniform(0.3, 0.9, num_landmarks)], 1)


def _synthetic_image(rng: np.random.Generator, template: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """One grey uint8 image (H, W) and its landmarks (L, 2) in pixels: a bright skull-like ellipse on a dark
    gradient, one small blob of its own intensity and size per landmark, smooth shading and noise; the landmarks move
    with a random similarity transform of the template plus a little jitter."""
    h, w = size
    n = template.shape[0]
    angle = rng.uniform(-0.08, 0.08)
    scale = rng.uniform(0.93, 1.07)
    shift = rng.uniform(-0.04, 0.04, 2)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    centre = np.array([0.55, 0.55])
    unit = (template - centre) @ rot.T * scale + centre + shift + rng.normal(0, 0.006, (n, 2))
    points = unit * np.array([w - 1, h - 1])
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    cx, cy = (0.5 + shift[0]) * (w - 1), (0.45 + shift[1]) * (h - 1)
    skull = ((xx - cx) / (0.42 * w * scale)) ** 2 + ((yy - cy) / (0.38 * h * scale)) ** 2 <= 1
    img = 40 + 30 * yy / h + 70 * skull
    img += 15 * np.sin(xx / w * rng.uniform(2, 5) + rng.uniform(0, 6)) * np.cos(yy / h * rng.uniform(2, 5))
    blob = max(2.0, 0.012 * min(h, w))
    for j, (x, y) in enumerate(points):
        sigma = blob * (1 + 0.15 * (j % 5))
        r = int(np.ceil(4 * sigma))  # the blob is negligible beyond 4 sigma: draw it in its window only
        y0, y1, x0, x1 = max(0, int(y) - r), min(h, int(y) + r + 1), max(0, int(x) - r), min(w, int(x) + r + 1)
        r2 = (xx[y0:y1, x0:x1] - x) ** 2 + (yy[y0:y1, x0:x1] - y) ** 2
        img[y0:y1, x0:x1] += (60 + 80 * (j % 3 == 0) - 50 * (j % 4 == 1)) * np.exp(-r2 / (2 * sigma**2))
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), points


def _synthetic_complete(folder: Path, params: dict) -> bool:
    try:
        return json.loads((folder / "synthetic.json").read_text(encoding="utf-8")) == params
    except (OSError, ValueError):
        return False


def write_synthetic_ceph(
    out_dir: str | os.PathLike,
    num_train: int = 12,
    num_test1: int = 9,
    layout: str = "official",
    size: Sequence[int] = (480, 387),
    num_landmarks: int = NUM_LANDMARKS,
    seed: int = 0,
) -> Path:
    """Write a small cephalometric dataset in either layout, for tests and the bundle's default data.

    Images are ``size`` (H, W) grey pixels (1/5 of the real 2400 x 1935 by default; the loader reads any size) with
    19 learnable landmarks: a small blob each, placed by a random similarity transform of one fixed template (see
    ``_synthetic_image``). The official layout gets BMP images and two doctors (the junior's points are the senior's
    plus Gaussian noise of 3 pixels, so the average differs from both); the CSV layout gets RGB JPEGs and the senior
    doctor only, as ``../shared/data/isbi2015_ceph``. Deterministic; nothing is rewritten when ``out_dir`` already
    holds the same set (``synthetic.json``, written last); a folder holding other data is refused.

    Args:
        out_dir: the dataset folder (created).
        num_train: images of the official training set.
        num_test1: images of Test1 (cut into validation and test by :func:`split_ceph`).
        layout: "official" or "csv".
        size: (H, W) of the images.
        num_landmarks: landmarks per image.
        seed: random seed.

    Returns:
        ``out_dir`` as a Path.
    """
    from PIL import Image

    out = Path(out_dir)
    if layout not in ("official", "csv"):
        raise ValueError(f"layout={layout!r}: use 'official' or 'csv'.")
    params = {"generator": "robust_bundles.data.ceph.write_synthetic_ceph", "version": 1, "num_train": int(num_train),
              "num_test1": int(num_test1), "layout": layout, "size": [int(s) for s in size],
              "num_landmarks": int(num_landmarks), "seed": int(seed)}
    if _synthetic_complete(out, params):
        logger.info("synthetic cephalometric dataset %s already complete, not rewritten", out)
        return out
    if out.is_dir() and any(out.iterdir()) and not (out / "synthetic.json").is_file():
        raise FileExistsError(f"{out} holds files that write_synthetic_ceph did not write: refusing to overwrite a "
                              f"real dataset; choose an empty folder.")
    if (out / "synthetic.json").is_file():  # an older synthetic set of other settings: replace it whole
        import shutil

        (out / "synthetic.json").unlink()
        for sub in ("RawImage", "AnnotationsByMD", "cepha400"):
            shutil.rmtree(out / sub, ignore_errors=True)
        for f in out.glob("*_senior.csv"):
            f.unlink()
    rng = np.random.default_rng([int(seed), 0])
    template = _template(int(num_landmarks), rng)
    h, w = int(size[0]), int(size[1])
    rows: dict[tuple[str, str], list] = {}
    number = 0
    for set_name, count in (("train", int(num_train)), ("test1", int(num_test1))):
        for _ in range(count):
            number += 1
            case = f"{number:03d}"
            image, points = _synthetic_image(np.random.default_rng([int(seed), number]), template, (h, w))
            junior = points + np.random.default_rng([int(seed), number, 1]).normal(0, 3.0, points.shape)
            if layout == "official":
                path = out / "RawImage" / _OFFICIAL_FOLDERS[set_name] / f"{case}.bmp"
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(path, lambda tmp: Image.fromarray(image).save(tmp, format="BMP"))  # noqa: B023 (called now)
                for doctor, pts in (("senior", points), ("junior", junior)):
                    text = "".join(f"{x:.0f},{y:.0f}\n" for x, y in pts) + "1\n2\n"  # then non-landmark lines
                    atomic_write_text(out / "AnnotationsByMD" / f"400_{doctor}" / f"{case}.txt", text)
            else:
                path = out / "cepha400" / f"{case}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                rgb = Image.fromarray(image).convert("RGB")
                atomic_write(path, lambda tmp: rgb.save(tmp, format="JPEG", quality=95))  # noqa: B023 (called now)
                rows.setdefault((set_name, "senior"), []).append([f"{case}.jpg", *np.round(points).astype(int).ravel()])
    header = ["image_path"] + [f"{i}_{c}" for i in range(1, int(num_landmarks) + 1) for c in ("x", "y")]
    for (set_name, doctor), lines in rows.items():
        text = ",".join(header) + "\n" + "".join(",".join(str(v) for v in line) + "\n" for line in lines)
        atomic_write_text(out / f"{set_name}_{doctor}.csv", text)
    atomic_write_text(out / "synthetic.json", json.dumps(params, indent=1) + "\n")
    return out


def synthetic_default(out_dir: str | os.PathLike, **kwargs: Any) -> str:
    """The bundle's default ``dataset_dir``: :func:`write_synthetic_ceph` (written once), marked and announced loudly
    as synthetic (:func:`robust_bundles.data.synthetic.is_synthetic`), so that every log and report says its numbers mean
    nothing about the real task."""
    out = write_synthetic_ceph(out_dir, **kwargs)
    mark_synthetic(out, "robust_bundles.data.ceph.write_synthetic_ceph")
    return announce_synthetic(out, "synthetic cephalometric X-rays (robust_bundles.data.ceph.write_synthetic_ceph)")
