"""Medical Segmentation Decathlon (MSD) task folders -> 2D slice samples with stable ids.

An MSD task folder (e.g. ``Task04_Hippocampus``) holds ``dataset.json``, ``imagesTr/*.nii.gz`` and
``labelsTr/*.nii.gz``; ``dataset.json`` lists the training cases as
``"training": [{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}, ...]``. This module turns such a
folder into the 2D samples the bundles train on:

1. :func:`read_msd_datalist` reads and checks ``dataset.json`` (one dict per case, sorted by case name).
2. :func:`robust_bundles.data.splits.split_cases` splits the *cases* (never the slices) into train/validation/test
   with a fixed seed.
3. :func:`robust_bundles.data.nifti.load_volume_pair` reads one image/label pair and checks that the two match;
   :func:`robust_bundles.data.nifti.zscore` normalises each volume (and modality) as nnU-Net does for MRI.
4. :func:`load_slices` cuts the volumes of one split into 2D slices ``(C, H, W)`` and gives each slice a stable id
   (:func:`robust_bundles.transforms.assign_sample_ids` over ``(case, slice)``), so AMAT's per-sample margins stay
   attached to the right slice.

Also here: :func:`split_summary` / :func:`write_split_json` (the split, for reports) and :func:`foreground_only`.
Synthetic MSD data is :mod:`robust_bundles.data.synthetic_msd`, archives and downloads :mod:`robust_bundles.data.archives`.

Units: the MSD hippocampus volumes are about 35 x 50 x 36 voxels of 1 mm; intensities are arbitrary MRI units before
z-scoring and unitless (standard deviations of the volume) after it. Slice shapes differ between cases (the crops
differ), so batching needs padding or resizing in the bundle's transforms.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..bundle import require_file
from ..io import atomic_write_text
from ..transforms import assign_sample_ids, datalist_digest
from .nifti import NIFTI_SUFFIXES, load_volume_pair, zscore
from .splits import SPLITS, _check_fractions, first_cases, split_cases

__all__ = [
    "read_msd_datalist",
    "image_datalist",
    "load_slices",
    "slice_digest",
    "foreground_only",
    "split_summary",
    "write_split_json",
    "ARCHIVE_SUFFIXES",
]

logger = logging.getLogger("robust_bundles.data.msd")

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar", ".zip")
_DATASET_JSON_EXAMPLE = (
    '{"name": "MyTask", "labels": {"0": "background", "1": "..."}, "modality": {"0": "MRI"}, '
    '"training": [{"image": "./imagesTr/case_001.nii.gz", "label": "./labelsTr/case_001.nii.gz"}, ...]}'
)
_LAYOUT = "an MSD task folder holds dataset.json, imagesTr/<case>.nii.gz and labelsTr/<case>.nii.gz (same file names)"


def _is_appledouble(name: str) -> bool:
    """macOS resource-fork files ("._x.nii.gz") that MSD archives contain next to every image: never data."""
    return Path(name).name.startswith("._")


def _strip_nifti_suffix(name: str) -> str:
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


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
            f"(robust_bundles.data.synthetic_msd.write_synthetic_msd shows a complete example)."
        )
    loose = sorted(
        p.name for p in folder.iterdir() if p.name.endswith(NIFTI_SUFFIXES) and not _is_appledouble(p.name)
    )
    if loose:
        return FileNotFoundError(
            f"{json_path} does not exist and {folder} holds {len(loose)} NIfTI file(s) directly (e.g. {loose[0]}): "
            f"{_LAYOUT}. Move the images to imagesTr/ and the labels to labelsTr/ and write dataset.json, e.g. "
            f"{_DATASET_JSON_EXAMPLE}."
        )
    return FileNotFoundError(
        f"{json_path} does not exist: {folder} is not an MSD task folder ({_LAYOUT}). Set dataset_dir to such a "
        f"folder, or get one with robust_bundles.data.archives.fetch_msd (folder, .tar archive or URL)."
    )


def _dataset_json_path(dataset_dir: str | os.PathLike) -> Path:
    """Check that ``dataset_dir`` is an MSD folder and return its dataset.json, or raise the most helpful error."""
    folder = Path(dataset_dir).expanduser()
    if not folder.exists():
        raise FileNotFoundError(
            f"MSD dataset folder {folder} does not exist: set dataset_dir to the task folder ({_LAYOUT}), e.g. "
            f"../shared/data/msd_hippocampus, or get one with robust_bundles.data.archives.fetch_msd."
        )
    if not folder.is_dir():
        if folder.name.endswith(ARCHIVE_SUFFIXES):
            raise NotADirectoryError(
                f"{folder} is an archive, not a folder: extract it with robust_bundles.data.archives.fetch_msd({str(folder)!r}, root) "
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
    chosen = first_cases(chosen, max_cases)
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
    channels: int | None = None,
    channel_names: Sequence[str] | None = None,
) -> list[dict]:
    """Load the volumes of one split and cut them into 2D slice samples with stable ids.

    Each image is z-scored per volume and per modality (:func:`zscore`) before slicing, so every slice of a case
    shares the normalisation of its volume. Every slice is kept, including those without foreground. A multi-modality
    task (4D images, e.g. Task05_Prostate: T2 and ADC) gives slices of C channels; the images must have as many
    channels as dataset.json lists modalities.

    Args:
        dataset_dir: the MSD task folder.
        split: ``"train"``, ``"validation"``, ``"test"`` (see :func:`split_cases`) or ``"all"`` (every case).
        fractions: (train, validation, test) fractions of the cases.
        seed: seed of the case split.
        slice_axis: the volume axis the slices are cut along (-1: the last axis, Z, giving (X, Y) slices).
        expected_labels: class indices a label may hold (see :func:`load_volume_pair`); ``None`` skips the check.
        max_cases: keep only the first n cases of the split (sorted by name), for quick profiles.
        cases: use exactly these cases instead of a split (``split`` then only names them in the log).
        channels: the number of image channels (modalities) the bundle's network takes, e.g. 2 for Task05_Prostate
            (T2, ADC); an image with another number stops the run with an error naming the file. ``None``: only
            check against the modalities of dataset.json.
        channel_names: what the channels are, for that error (e.g. ``["T2", "ADC"]``).

    Returns:
        A plain list of dicts ``{"image": float32 (C, H, W), "label": uint8 (1, H, W), "case": str, "slice": int,
        "sample_id": int}``, ordered by case then slice, with ids 0..N-1 from
        :func:`robust_bundles.transforms.assign_sample_ids` over ``(case, slice)``; :func:`slice_digest` gives their digest.
        H and W are the volume's extent along the two other axes and differ between cases.
    """
    if not isinstance(slice_axis, (int, np.integer)) or not -3 <= int(slice_axis) <= 2:
        raise ValueError(f"slice_axis={slice_axis!r}: give a volume axis in -3..2 (-1 = the last axis).")
    datalist = read_msd_datalist(dataset_dir)
    selected = _select_cases(datalist, split, fractions, seed, max_cases, cases, dataset_dir)

    modalities = _modality_count(dataset_dir)
    axis = int(slice_axis) % 3
    slices: list[dict] = []
    for item in selected:
        image, label, _ = load_volume_pair(item["image"], item["label"], expected_labels)
        volume = image[..., None] if image.ndim == 3 else image  # (X, Y, Z, C)
        if channels is not None and volume.shape[-1] != int(channels):
            names = f" ({', '.join(channel_names)})" if channel_names else ""
            raise ValueError(
                f"image {Path(item['image']).name} has {volume.shape[-1]} channel(s) (shape "
                f"{tuple(image.shape)}) but this bundle expects {int(channels)}{names}, stored as "
                f"{'a 4D NIfTI (X, Y, Z, modality)' if int(channels) > 1 else 'a 3D NIfTI (X, Y, Z)'}: give the "
                f"dataset this bundle is for (file: {item['image']})."
            )
        if modalities is not None and volume.shape[-1] != modalities:
            raise ValueError(
                f"image {Path(item['image']).name} has {volume.shape[-1]} channel(s) but dataset.json lists "
                f"{modalities} modalit{'y' if modalities == 1 else 'ies'}: fix the image or the 'modality' of "
                f"{Path(dataset_dir) / 'dataset.json'} (file: {item['image']})."
            )
        # every modality z-scored over its own volume, as nnU-Net normalises each MRI channel
        volume = np.stack([zscore(volume[..., c]) for c in range(volume.shape[-1])])  # (C, X, Y, Z)
        volume = np.moveaxis(volume, axis + 1, 1)  # (C, S, H, W)
        label = np.moveaxis(label, axis, 0)  # (S, H, W)
        for index in range(label.shape[0]):
            slices.append(
                {
                    "image": np.ascontiguousarray(volume[:, index]),
                    "label": np.ascontiguousarray(label[index][None]),
                    "case": item["case"],
                    "slice": index,
                }
            )
    slices, _ = assign_sample_ids(slices, ("case", "slice"))
    ids = f"ids 0..{len(slices) - 1}" if slices else "no ids"
    logger.info("%s split: %d cases, %d slices (%s)", split, len(selected), len(slices), ids)
    return slices


def _modality_count(dataset_dir: str | os.PathLike) -> int | None:
    """The number of modalities dataset.json lists (its ``modality`` dict), or None when it lists none."""
    modality = _read_dataset_json(_dataset_json_path(dataset_dir)).get("modality")
    return len(modality) if isinstance(modality, dict) and modality else None


def slice_digest(slices: Sequence[Mapping]) -> str:
    """The digest of a list of slice samples: sha256 hex of their sorted ``(case, slice)`` keys.

    Equal to the digest :func:`robust_bundles.transforms.assign_sample_ids` returns for them, so it identifies the set of
    samples (and hence the meaning of every id) independently of list order. Store it with the margins. The keys do
    not hold ``slice_axis`` or the normalisation: keep those in the (checkpointed) config.

    Args:
        slices: the samples from :func:`load_slices` (any order).
    """
    return datalist_digest(slices, ("case", "slice"))


def foreground_only(slices: list[dict]) -> list[dict]:
    """The slices whose label has foreground (label > 0); ids and keys unchanged.

    The default segmentation metric (:func:`robust_bundles.tasks.segmentation.slice_dice`) only counts such slices, so evaluating
    attacks on the others costs time and changes nothing.
    """
    return [s for s in slices if np.asarray(s["label"]).max() > 0]


_NIFTI = (".nii.gz", ".nii")


def image_datalist(source: Any) -> list[dict]:
    """The ``[{"image": path}, ...]`` list of an inference run, from a folder or a list of paths or dicts.

    Args:
        source: a folder (every ``*.nii.gz`` and ``*.nii`` file in it, sorted; macOS ``._`` files skipped), or a list
            of image paths or of dicts with an ``"image"`` path.

    Returns:
        One dict per image, with the path as a string (other keys of given dicts are kept).

    Raises:
        FileNotFoundError: the folder or a listed image does not exist, or the folder holds no NIfTI file.
        ValueError: a list item is neither a path nor a dict with an "image" path.
    """
    if isinstance(source, (str, os.PathLike)):
        folder = Path(source).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(
                f"The input folder {folder} does not exist: set --input_dir to a folder of NIfTI images (.nii.gz), "
                f"or give --datalist \"[{{'image': 'path/to/image.nii.gz'}}]\"."
            )
        files = sorted(
            f for f in folder.iterdir() if f.name.endswith(_NIFTI) and not f.name.startswith("._") and f.is_file()
        )
        if not files:
            raise FileNotFoundError(
                f"The input folder {folder} holds no NIfTI image (*.nii.gz, *.nii): set --input_dir to a folder of "
                f"images, or give --datalist."
            )
        return [{"image": str(f)} for f in files]
    if not isinstance(source, (list, tuple)):
        raise ValueError(
            f"The inference input {source!r} is neither a folder nor a list: give --input_dir FOLDER or "
            f"--datalist \"[{{'image': 'path/to/image.nii.gz'}}]\"."
        )
    items = []
    for index, item in enumerate(source):
        if isinstance(item, (str, os.PathLike)):
            item = {"image": item}
        if not (isinstance(item, dict) and isinstance(item.get("image"), (str, os.PathLike))):
            raise ValueError(
                f"Item {index} of the inference datalist is {item!r}: each item is an image path or a dict "
                f"{{'image': path}}."
            )
        require_file(item["image"], "input image", "fix the path in --datalist, or use --input_dir FOLDER")
        items.append({**item, "image": str(item["image"])})
    if not items:
        raise ValueError("The inference datalist is empty: give --input_dir FOLDER, or images in --datalist.")
    return items
