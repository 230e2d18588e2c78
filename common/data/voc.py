"""Pascal VOC detection folders -> datalists with boxes, labels and stable sample ids.

The layout, as distributed (BCCD is one)::

    <root>/JPEGImages/<name>.jpg
    <root>/Annotations/<name>.xml
    <root>/ImageSets/Main/{train,val,trainval}.txt     one image name per line

``dataset_dir`` may be ``<root>`` itself or a folder holding exactly one such root (``../shared/data/bccd`` holds
``BCCD/``).

Box convention: VOC pixel coordinates ``[xmin, ymin, xmax, ymax]`` as written in the XML (x along image columns, y along
rows), kept as floats without the historical "-1" shift. MONAI's 2D detection code reads boxes as
``[x0, y0, x1, y1]`` along the first and second spatial axes of a ``(C, X, Y)`` tensor, and MONAI's ``PILReader``
(``LoadImage``) loads a 2D image as ``(X, Y)`` = (columns, rows): the VOC numbers are therefore MONAI ``StandardMode``
boxes of the image as MONAI loads it, with no reordering.

Annotation defects are handled, never trained on: a box whose size is zero or negative along an axis (after clipping to
the image) is dropped with a logged warning naming the file (BCCD has two: ``BloodImage_00338``, ``BloodImage_00343``);
a box reaching outside the image is clipped with a warning. An image without objects gives empty boxes ``(0, 4)``.
Layout errors (missing folder, listed image or annotation missing, corrupt XML, unknown class, image size different
from the XML's) raise an error naming the file and the fix.

Splits: the distributed ``train.txt`` is the training set; a test set is carved from ``val.txt`` with a fixed seed
(:func:`voc_splits`), the rest of ``val.txt`` is the validation set.
"""

from __future__ import annotations

import json
import logging
import math
import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Sequence

import numpy as np

from ..io import atomic_write, atomic_write_text, decompression_bomb_message
from ..transforms import assign_sample_ids, datalist_digest
from .splits import first_cases
from .synthetic import announce_synthetic, mark_synthetic

__all__ = [
    "BCCD_CLASSES",
    "SPLITS",
    "find_voc_root",
    "read_image_set",
    "parse_voc_annotation",
    "read_voc_datalist",
    "voc_splits",
    "load_voc",
    "write_synthetic_voc",
    "synthetic_default",
    "voc_digest",
]

logger = logging.getLogger("robust_bundles.data.voc")

#: BCCD's classes; the label of a box is its index in this tuple (RetinaNet's classes exclude the background).
BCCD_CLASSES = ("RBC", "WBC", "Platelets")
#: The split names :func:`voc_splits` returns.
SPLITS = ("train", "validation", "test")

_LAYOUT_HELP = (
    "expected a Pascal VOC folder holding JPEGImages/, Annotations/ and ImageSets/Main/ (e.g. ../shared/data/bccd/BCCD "
    "or its parent ../shared/data/bccd)"
)
_SYNTHETIC_MARKER = "synthetic.json"


def find_voc_root(dataset_dir: str | os.PathLike) -> Path:
    """The VOC root (the folder holding ``JPEGImages``, ``Annotations`` and ``ImageSets/Main``).

    Args:
        dataset_dir: the VOC root itself, or a folder holding exactly one VOC root (e.g. ``bccd/`` holding ``BCCD/``).

    Raises:
        FileNotFoundError: no VOC layout there (the message lists what is missing).
    """
    folder = Path(dataset_dir).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"VOC dataset folder {folder} does not exist: {_LAYOUT_HELP}.")

    def missing(p: Path) -> list[str]:
        return [n for n in ("JPEGImages", "Annotations", "ImageSets/Main") if not (p / n).is_dir()]

    if not missing(folder):
        return folder
    candidates = [c for c in sorted(folder.iterdir()) if c.is_dir() and not missing(c)]
    if len(candidates) == 1:
        return candidates[0]
    if len(candidates) > 1:
        raise FileNotFoundError(
            f"{folder} holds several VOC folders ({', '.join(c.name for c in candidates)}): set dataset_dir to one."
        )
    raise FileNotFoundError(f"{folder} is not a VOC folder (missing {', '.join(missing(folder))}): {_LAYOUT_HELP}.")


def read_image_set(root: str | os.PathLike, name: str) -> list[str]:
    """Image names listed in ``ImageSets/Main/<name>.txt`` (blank lines skipped, order kept, duplicates refused)."""
    path = Path(root) / "ImageSets" / "Main" / f"{name}.txt"
    if not path.is_file():
        present = sorted(p.stem for p in path.parent.glob("*.txt")) if path.parent.is_dir() else []
        raise FileNotFoundError(f"Image set {path} does not exist (present: {present}): {_LAYOUT_HELP}.")
    names = [line.split()[0] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise ValueError(f"{path} lists {n!r} twice: every image must appear once per image set.")
        seen.add(n)
    return names


def _text(node: ET.Element, tag: str, path: Path, where: str) -> str:
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise ValueError(f"{path}: {where} has no <{tag}>: the annotation is incomplete; fix or remove the file.")
    return child.text.strip()


def _number(node: ET.Element, tag: str, path: Path, where: str) -> float:
    text = _text(node, tag, path, where)
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{path}: {where} has <{tag}>{text}</{tag}>, not a number.") from None
    if not math.isfinite(value):
        raise ValueError(f"{path}: {where} has <{tag}>{text}</{tag}>, not a finite number.")
    return value


def parse_voc_annotation(path: str | os.PathLike, classes: Sequence[str] = BCCD_CLASSES) -> dict:
    """Read one VOC annotation file.

    Args:
        path: the ``Annotations/<name>.xml`` file.
        classes: class names; a box's label is the index of its ``<name>`` here.

    Returns:
        ``{"size": (width, height), "boxes": float32 (N, 4) [xmin, ymin, xmax, ymax] in pixels,
        "labels": int64 (N,), "difficult": bool (N,), "dropped": int}`` where ``dropped`` counts the boxes
        removed for zero or negative size (each one logged with the file name).

    Raises:
        ValueError: corrupt XML, a missing field, a non-numeric coordinate or an unknown class (the message names
            the file and the object).
    """
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise ValueError(f"{path} is not valid XML ({e}): replace it with the original annotation file.") from None
    size = root.find("size")
    if size is None:
        raise ValueError(f"{path} has no <size>: a VOC annotation gives the image width and height.")
    width, height = _number(size, "width", path, "<size>"), _number(size, "height", path, "<size>")
    if width <= 0 or height <= 0:
        raise ValueError(f"{path}: image size {width:g} x {height:g} is not positive.")
    boxes, labels, difficult = [], [], []
    dropped = 0
    for k, obj in enumerate(root.findall("object")):
        where = f"object {k}"
        name = _text(obj, "name", path, where)
        if name not in classes:
            raise ValueError(
                f"{path}: {where} has class {name!r}, which is not one of {list(classes)}: pass the dataset's class "
                "names as classes."
            )
        box_node = obj.find("bndbox")
        if box_node is None:
            raise ValueError(f"{path}: {where} ({name}) has no <bndbox>.")
        raw = [_number(box_node, t, path, f"{where} ({name})") for t in ("xmin", "ymin", "xmax", "ymax")]
        box = [min(max(raw[0], 0.0), width), min(max(raw[1], 0.0), height),
               min(max(raw[2], 0.0), width), min(max(raw[3], 0.0), height)]
        if box[2] <= box[0] or box[3] <= box[1]:
            dropped += 1
            logger.warning(
                f"{path.name}: dropped {where} ({name}) with box {[f'{v:g}' for v in raw]}: zero or negative size "
                "(an annotation defect; it is not trained or evaluated on)."
            )
            continue
        if box != raw:
            logger.warning(f"{path.name}: {where} ({name}) box {[f'{v:g}' for v in raw]} clipped to the image.")
        diff = obj.find("difficult")
        boxes.append(box)
        labels.append(classes.index(name))
        difficult.append(diff is not None and (diff.text or "0").strip() == "1")
    return {
        "size": (int(round(width)), int(round(height))),
        "boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        "labels": np.asarray(labels, dtype=np.int64),
        "difficult": np.asarray(difficult, dtype=bool),
        "dropped": dropped,
    }


def _image_path(root: Path, name: str) -> Path:
    for ext in (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG"):
        p = root / "JPEGImages" / f"{name}{ext}"
        if p.is_file():
            return p
    raise FileNotFoundError(
        f"Image {root / 'JPEGImages' / (name + '.jpg')} is listed but missing: restore it or remove {name!r} from the "
        "ImageSets/Main lists."
    )


def read_voc_datalist(
    dataset_dir: str | os.PathLike,
    names: Sequence[str] | str = "trainval",
    classes: Sequence[str] = BCCD_CLASSES,
    check_images: bool = True,
) -> list[dict]:
    """One datalist item per image.

    Args:
        dataset_dir: the VOC root or its parent (:func:`find_voc_root`).
        names: image names, or the name of an image set (``"trainval"`` reads ``ImageSets/Main/trainval.txt``).
        classes: class names (label = index).
        check_images: open every image's header and check that its size equals the XML's (cheap: no decoding).

    Returns:
        Items ``{"image": absolute path (str), "name": str, "boxes": float32 (N, 4), "labels": int64 (N,),
        "difficult": bool (N,), "original_size": [width, height]}`` in the order of ``names``; no sample ids (a
        split assigns them).
    """
    root = find_voc_root(dataset_dir)
    if isinstance(names, str):
        names = read_image_set(root, names)
    items, dropped = [], 0
    for name in names:
        xml = root / "Annotations" / f"{name}.xml"
        if not xml.is_file():
            raise FileNotFoundError(
                f"Annotation {xml} is missing for the listed image {name!r}: every image needs its XML (an image without "
                "objects has an XML without <object>)."
            )
        image = _image_path(root, name)
        ann = parse_voc_annotation(xml, classes)
        dropped += ann["dropped"]
        if check_images:
            from PIL import Image

            try:
                with Image.open(image) as im:
                    actual = tuple(im.size)
            except OSError as e:
                raise ValueError(f"{image} cannot be read as an image ({e}): replace the file.") from None
            except Image.DecompressionBombError as e:
                raise ValueError(decompression_bomb_message(image, e, Image.MAX_IMAGE_PIXELS)) from None
            if actual != ann["size"]:
                raise ValueError(
                    f"{image} is {actual[0]} x {actual[1]} pixels but {xml} says {ann['size'][0]} x {ann['size'][1]}: "
                    "the boxes would not match the image; fix the annotation's <size>."
                )
        items.append(
            {
                "image": str(image.resolve()),
                "name": name,
                "boxes": ann["boxes"],
                "labels": ann["labels"],
                "difficult": ann["difficult"],
                "original_size": list(ann["size"]),
            }
        )
    if dropped:
        logger.warning(f"{root}: {dropped} box(es) of zero size dropped in {len(items)} images.")
    return items


def voc_splits(
    dataset_dir: str | os.PathLike,
    classes: Sequence[str] = BCCD_CLASSES,
    seed: int = 0,
    test_fraction: float = 0.5,
    train_set: str = "train",
    val_set: str = "val",
) -> dict[str, list[str]]:
    """Train / validation / test image names: the distributed lists with a test set carved from the validation list.

    ``train`` is ``ImageSets/Main/<train_set>.txt`` as distributed; ``round(test_fraction * len(val))`` names of
    ``<val_set>.txt``, drawn with ``numpy.random.default_rng(seed)`` from the sorted list, form ``test``; the rest is
    ``validation``. Every list is sorted. The result depends only on the two lists, the seed and the fraction.

    Raises:
        ValueError: the lists overlap (a train/test leak), or the fraction leaves a split empty.
    """
    del classes  # the split does not depend on the annotations; kept for a uniform signature with load_voc
    root = find_voc_root(dataset_dir)
    train = sorted(read_image_set(root, train_set))
    val = sorted(read_image_set(root, val_set))
    overlap = sorted(set(train) & set(val))
    if overlap:
        raise ValueError(
            f"{root}/ImageSets/Main: {len(overlap)} image(s) are in both {train_set}.txt and {val_set}.txt (e.g. "
            f"{overlap[0]}): a test image would also be trained on; fix the lists."
        )
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction={test_fraction}: give a fraction in (0, 1) of the {val_set} list.")
    n_test = int(round(test_fraction * len(val)))
    if n_test < 1 or n_test >= len(val) or not train:
        raise ValueError(
            f"{len(train)} training and {len(val)} validation images with test_fraction={test_fraction} leave a split "
            "empty: add images or change the fraction."
        )
    rng = np.random.default_rng(seed)
    test_idx = set(rng.choice(len(val), size=n_test, replace=False).tolist())
    return {
        "train": train,
        "validation": [n for i, n in enumerate(val) if i not in test_idx],
        "test": [n for i, n in enumerate(val) if i in test_idx],
    }


def load_voc(
    dataset_dir: str | os.PathLike,
    split: str = "train",
    classes: Sequence[str] = BCCD_CLASSES,
    seed: int = 0,
    test_fraction: float = 0.5,
    max_cases: int | None = None,
    check_images: bool = True,
) -> list[dict]:
    """The datalist of one split, with stable sample ids (the entry point for bundle configs).

    Args:
        dataset_dir: the VOC root or its parent.
        split: ``"train"``, ``"validation"``, ``"test"`` (:func:`voc_splits`) or ``"all"`` (``trainval``).
        classes: class names (label = index).
        seed: seed of the test split.
        test_fraction: fraction of the validation list that becomes the test set.
        max_cases: keep the first n images of the split (sorted by name), for quick profiles; None keeps all.
        check_images: check every image's size against its XML.

    Returns:
        Items as :func:`read_voc_datalist` plus ``"sample_id"``: 0..N-1 in the order of the image names
        (:func:`robust_bundles.transforms.assign_sample_ids` over ``("name",)``), sorted by name.
    """
    if split == "all":
        names = sorted(read_image_set(find_voc_root(dataset_dir), "trainval"))
    elif split in SPLITS:
        names = voc_splits(dataset_dir, classes, seed, test_fraction)[split]
    else:
        raise ValueError(f"Unknown split {split!r}; use one of {list(SPLITS) + ['all']}.")
    names = first_cases(names, max_cases, "images")
    items = read_voc_datalist(dataset_dir, names, classes, check_images)
    items, _ = assign_sample_ids(items, key_fields=("name",))
    n_boxes = sum(len(it["labels"]) for it in items)
    logger.info(f"VOC {split}: {len(items)} images, {n_boxes} boxes from {find_voc_root(dataset_dir)}")
    return items


def voc_digest(samples: Sequence[dict]) -> str:
    """The digest of a datalist (sha256 of its sorted image names): what the margins of AMAT are stored with."""
    return datalist_digest(samples, ("name",))


# ----------------------------------------------------------------------------------------------------------------------
# synthetic data in the same layout
# ----------------------------------------------------------------------------------------------------------------------


def _voc_xml(filename: str, width: int, height: int, objects: Sequence[tuple[str, Sequence[float]]]) -> str:
    ann = ET.Element("annotation")
    ET.SubElement(ann, "folder").text = "JPEGImages"
    ET.SubElement(ann, "filename").text = filename
    size = ET.SubElement(ann, "size")
    for tag, v in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(v)
    ET.SubElement(ann, "segmented").text = "0"
    for name, box in objects:
        obj = ET.SubElement(ann, "object")
        ET.SubElement(obj, "name").text = name
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "difficult").text = "0"
        bb = ET.SubElement(obj, "bndbox")
        for tag, v in zip(("xmin", "ymin", "xmax", "ymax"), box):
            ET.SubElement(bb, tag).text = str(int(v))
    ET.indent(ann, space="\t")
    return ET.tostring(ann, encoding="unicode") + "\n"


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [0, 1]: a coarse random grid upsampled bilinearly to (height, width)."""
    grid = rng.random((cells + 1, cells + 1))
    ys, xs = np.linspace(0, cells, height), np.linspace(0, cells, width)
    y0, x0 = np.minimum(ys.astype(int), cells - 1), np.minimum(xs.astype(int), cells - 1)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    g = grid
    return (
        g[y0][:, x0] * (1 - fy) * (1 - fx) + g[y0 + 1][:, x0] * fy * (1 - fx)
        + g[y0][:, x0 + 1] * (1 - fy) * fx + g[y0 + 1][:, x0 + 1] * fy * fx
    )


# (colour RGB 0-255, side length as a fraction of the shorter image side (min, max)) for each synthetic class
_SYNTH_STYLE = (
    ((205, 80, 85), (0.16, 0.24)),  # class 0 ("RBC"): red, medium
    ((95, 60, 160), (0.26, 0.34)),  # class 1 ("WBC"): purple, large
    ((60, 40, 90), (0.07, 0.10)),  # class 2 ("Platelets"): dark violet, small
)


def _synthetic_image(
    rng: np.random.Generator, width: int, height: int, classes: Sequence[str], num_objects: int
) -> tuple[np.ndarray, list[tuple[str, list[float]]]]:
    base = np.array([232.0, 205.0, 200.0])  # pale pink smear
    tex = _smooth_noise(rng, height, width, 4)[..., None] * 30 - 15 + rng.normal(0, 6, (height, width, 1))
    img = base[None, None, :] + tex
    objects: list[tuple[str, list[float]]] = []
    placed: list[np.ndarray] = []
    short = min(width, height)
    for _ in range(num_objects):
        c = int(rng.integers(len(classes)))
        colour, (lo, hi) = _SYNTH_STYLE[c % len(_SYNTH_STYLE)]
        for _attempt in range(20):
            w = max(3, int(round(short * rng.uniform(lo, hi))))
            h = max(3, int(round(w * rng.uniform(0.8, 1.25))))
            if w >= width or h >= height:
                continue
            x0, y0 = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
            box = np.array([x0, y0, x0 + w, y0 + h], dtype=float)
            if all(_iou(box, other) < 0.05 for other in placed):
                break
        else:
            continue
        placed.append(box)
        shade = np.array(colour, dtype=float) + rng.normal(0, 8, 3)
        img[y0 : y0 + h, x0 : x0 + w] = shade + rng.normal(0, 6, (h, w, 1))
        objects.append((classes[c], box.tolist()))
    return np.clip(img, 0, 255).astype(np.uint8), objects


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def write_synthetic_voc(
    out_dir: str | os.PathLike,
    num_images: int = 24,
    image_size: Sequence[int] = (96, 96),
    objects_per_image: Sequence[int] = (2, 5),
    val_fraction: float = 0.25,
    empty_images: int = 1,
    seed: int = 0,
    classes: Sequence[str] = BCCD_CLASSES,
) -> Path:
    """Write a small VOC-layout detection dataset: filled rectangles of three classes on a textured background.

    Class i is a rectangle of a fixed colour and size range (class 0 red and medium, 1 purple and large, 2 dark and
    small, as BCCD's RBC, WBC and Platelets), with a little colour noise, on a pale smooth-noise background, saved as
    JPEG (quality 95) with a VOC XML per image and ``ImageSets/Main/{train,val,trainval}.txt``. Rectangles barely
    overlap (IoU < 0.05). The first ``empty_images`` images have no object (their XML has no ``<object>``).

    The output is deterministic given the arguments; if ``out_dir`` already holds a complete dataset written with the
    same arguments (``synthetic.json``, written last), nothing is rewritten.

    Args:
        out_dir: the VOC root to write (created).
        num_images: number of images (names ``synthetic_0000`` ...).
        image_size: (width, height) in pixels.
        objects_per_image: (min, max) number of rectangles per non-empty image.
        val_fraction: fraction of the images listed in ``val.txt`` (the rest in ``train.txt``; empty images are in
            train).
        empty_images: number of images without objects.
        seed: random seed.
        classes: class names written in the XML.

    Returns:
        ``out_dir`` as a :class:`~pathlib.Path`.

    Raises:
        FileExistsError: ``out_dir`` holds VOC annotations that this function did not write (a real dataset).
        ValueError: bad arguments.
    """
    out = Path(out_dir)
    width, height = (int(v) for v in image_size)
    lo, hi = (int(v) for v in objects_per_image)
    if width < 16 or height < 16:
        raise ValueError(f"image_size={tuple(image_size)}: give at least 16 x 16 pixels.")
    if not 0 <= lo <= hi:
        raise ValueError(f"objects_per_image={tuple(objects_per_image)}: give (min, max) with 0 <= min <= max.")
    if num_images < 2 or not 0 <= empty_images < num_images:
        raise ValueError(f"num_images={num_images}, empty_images={empty_images}: need >= 2 images, fewer empty.")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction={val_fraction}: give a fraction in (0, 1).")
    params = {
        "generator": "robust_bundles.data.voc.write_synthetic_voc",
        "version": 1,
        "num_images": int(num_images),
        "image_size": [width, height],
        "objects_per_image": [lo, hi],
        "val_fraction": float(val_fraction),
        "empty_images": int(empty_images),
        "seed": int(seed),
        "classes": [str(c) for c in classes],
    }
    marker = out / _SYNTHETIC_MARKER
    if marker.is_file():
        try:
            if json.loads(marker.read_text(encoding="utf-8")) == params:
                logger.info("synthetic VOC dataset %s already complete, not rewritten", out)
                return out
        except (OSError, ValueError):
            pass
    elif (out / "Annotations").is_dir() and any((out / "Annotations").iterdir()):
        raise FileExistsError(
            f"{out} already holds VOC annotations that write_synthetic_voc did not write: choose another folder."
        )
    from PIL import Image

    rng = np.random.default_rng(seed)
    names = [f"synthetic_{i:04d}" for i in range(num_images)]
    for i, name in enumerate(names):
        n_obj = 0 if i < empty_images else int(rng.integers(lo, hi + 1))
        pixels, objects = _synthetic_image(rng, width, height, classes, n_obj)
        atomic_write(
            out / "JPEGImages" / f"{name}.jpg",
            lambda tmp, px=pixels: Image.fromarray(px).save(tmp, format="JPEG", quality=95),
        )
        atomic_write_text(out / "Annotations" / f"{name}.xml", _voc_xml(f"{name}.jpg", width, height, objects))
    n_val = max(1, int(round(val_fraction * num_images)))
    n_val = min(n_val, num_images - max(1, empty_images))
    val = names[num_images - n_val :]
    train = names[: num_images - n_val]
    main = out / "ImageSets" / "Main"
    atomic_write_text(main / "train.txt", "\n".join(train) + "\n")
    atomic_write_text(main / "val.txt", "\n".join(val) + "\n")
    atomic_write_text(main / "trainval.txt", "\n".join(names) + "\n")
    atomic_write_text(marker, json.dumps(params, indent=2) + "\n")
    return out


def synthetic_default(
    out_dir: str | os.PathLike,
    num_images: int = 40,
    image_size: Sequence[int] = (160, 120),
    objects_per_image: Sequence[int] = (3, 8),
    val_fraction: float = 0.4,
    **kwargs,
) -> str:
    """A bundle's default ``dataset_dir``: :func:`write_synthetic_voc` (written once; 40 images of 160 x 120 pixels,
    24 train, 8 validation, 8 test), marked and announced loudly as synthetic
    (:func:`robust_bundles.data.synthetic.is_synthetic`), so that every log and report says its numbers mean nothing about the
    real task."""
    out = write_synthetic_voc(out_dir, num_images, image_size, objects_per_image, val_fraction, **kwargs)
    mark_synthetic(out, "robust_bundles.data.voc.write_synthetic_voc")
    return announce_synthetic(out, "synthetic blood-cell rectangles in VOC layout (robust_bundles.data.voc.write_synthetic_voc)")
