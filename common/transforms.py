"""Stable per-sample ids, and an image loader that refuses bad input with the file named.

AMAT keeps one margin E(i) per training sample, so every sample needs an integer id i in 0..N-1 that does not change
between epochs and survives shuffling, caching (``monai.data.CacheDataset``), worker processes and resuming from a
checkpoint. The id is therefore *data*: it is written into each datalist item before the dataset is built and travels
with the sample through every transform and the collate function, instead of being inferred from a loader position.

- :func:`assign_sample_ids` gives the ids. An id depends only on the *set* of samples (their key fields, by default
  ``("case", "slice")``), never on the order of the list, and comes with a digest of the keys that a resumed run
  compares with the one stored in its checkpoint to detect a changed dataset.
- :class:`SampleIdd` checks, inside the transform chain, that every sample has its id, and turns it into a
  ``torch.int64`` scalar tensor, so that a batch carries a ``(B,)`` int64 tensor of ids.
"""

from __future__ import annotations

import hashlib
import json
import numbers
from typing import Any, Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

__all__ = ["assign_sample_ids", "datalist_digest", "SampleIdd", "LoadCheckedImaged", "refuse_uninformative",
           "RefuseUninformatived"]

_NO_ID_FIX = (
    "assign ids with robust_bundles.transforms.assign_sample_ids (or robust_bundles.data.msd.load_slices) before the dataset is built"
)


def _key_value(value: Any, field: str, index: int) -> tuple[int, int, str]:
    """Canonical, totally ordered form of one key field: integers sort numerically, everything else as a string."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return (0, int(value), "")
    if value is None:
        raise ValueError(f"Item {index} has {field!r} = None: every sample needs a value for each key field.")
    return (1, 0, str(value))


def _canonical_keys(datalist: Sequence[Mapping], key_fields: Sequence[str]) -> list[tuple]:
    """Return the canonical key tuple of every item, in list order; raise on a missing key field."""
    if isinstance(key_fields, str):
        key_fields = (key_fields,)
    if not key_fields:
        raise ValueError("key_fields is empty: name the item fields that identify a sample, e.g. ('case', 'slice').")
    keys = []
    for index, item in enumerate(datalist):
        if not isinstance(item, Mapping):
            raise TypeError(f"Item {index} is a {type(item).__name__}, not a dict: a datalist is a list of dicts.")
        key = []
        for field in key_fields:
            if field not in item:
                raise ValueError(
                    f"Item {index} has no key field {field!r} (it has {sorted(map(str, item))}): every sample needs "
                    f"all of {tuple(key_fields)} to get a stable id; add it or pass other key_fields."
                )
            key.append(_key_value(item[field], field, index))
        keys.append(tuple(key))
    return keys


def _digest(sorted_keys: Sequence[tuple], key_fields: Sequence[str]) -> str:
    """sha256 (hex) of the key fields' names and the sorted canonical keys."""
    if isinstance(key_fields, str):
        key_fields = (key_fields,)
    payload = {"key_fields": list(key_fields), "keys": [list(k) for k in sorted_keys]}
    text = json.dumps(payload, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _display_key(key: tuple, key_fields: Sequence[str]) -> str:
    return ", ".join(f"{f}={(v if t == 0 else s)!r}" for f, (t, v, s) in zip(key_fields, key))


def assign_sample_ids(
    datalist: list[dict], key_fields: Sequence[str] = ("case", "slice"), id_key: str = "sample_id"
) -> tuple[list[dict], str]:
    """Give every sample a stable integer id that depends only on the set of samples.

    The items are sorted (in a copy of the list) by their key fields, integers numerically and anything else as a
    string, and get the ids 0..N-1 in that order. Shuffling the input list therefore does not change any id, and two
    runs over the same samples agree on every id.

    Args:
        datalist: list of N dicts, each holding every field of ``key_fields``. The dicts are updated in place (the id
            is written under ``id_key``, replacing an existing one); the order of the list is not changed.
        key_fields: the fields that together identify a sample, e.g. ``("case", "slice")`` for 2D slices of volumes.
        id_key: the field the id is written to.

    Returns:
        ``(datalist, digest)``: the same list in its original order, and the sha256 hex digest of the sorted keys
        (see :func:`datalist_digest`). Store the digest with the margins; a different digest at resume means the
        dataset changed and the stored margins no longer belong to these ids.

    Raises:
        ValueError: an item lacks a key field (the message names the field and the item index), or two items have
            the same key (the message names the key).
    """
    keys = _canonical_keys(datalist, key_fields)
    order = sorted(range(len(keys)), key=keys.__getitem__)
    for previous, current in zip(order, order[1:]):
        if keys[previous] == keys[current]:
            raise ValueError(
                f"Items {previous} and {current} have the same key ({_display_key(keys[current], key_fields)}): "
                f"sample ids need unique keys; remove the duplicate or add a field to key_fields."
            )
    for sample_id, index in enumerate(order):
        datalist[index][id_key] = sample_id
    return datalist, _digest([keys[i] for i in order], key_fields)


def datalist_digest(datalist: Sequence[Mapping], key_fields: Sequence[str] = ("case", "slice")) -> str:
    """The sha256 hex digest of the sorted sample keys: the digest :func:`assign_sample_ids` returns.

    Args:
        datalist: list of dicts holding every field of ``key_fields``.
        key_fields: the fields that together identify a sample.
    """
    return _digest(sorted(_canonical_keys(datalist, key_fields)), key_fields)


def _describe_sample(data: Mapping) -> str:
    """A short human name for a sample in error messages: its case/slice if it has them, else its fields."""
    parts = [f"{field} {data[field]}" for field in ("case", "slice") if field in data]
    if parts:
        return ", ".join(parts)
    image = data.get("image")
    if isinstance(image, str):
        return image
    return "with fields " + ", ".join(sorted(map(str, data)))


class SampleIdd(MapTransform):
    """Check that a sample carries its stable id and turn the id into a ``torch.int64`` scalar tensor.

    Put it first in the transform chain of every dataset whose samples need a margin. Because the id is part of the
    sample, it survives shuffling, ``CacheDataset`` caching (this transform is deterministic, so it is cached),
    worker processes and resuming; after collation a batch holds a ``(B,)`` int64 tensor under the key.

    Args:
        keys: the field holding the id (default ``"sample_id"``), as given by
            :func:`robust_bundles.transforms.assign_sample_ids` or :func:`robust_bundles.data.msd.load_slices`.
        allow_missing_keys: do not raise when a sample has no id (leave it without one). Off by default: a missing
            id is a bug that would silently give the sample a wrong margin.

    Raises:
        KeyError: a sample has no id (the message says how to assign them).
        ValueError: the id is not a single non-negative integer.
    """

    def __init__(self, keys: KeysCollection = "sample_id", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.keys:
            if key not in d:
                if self.allow_missing_keys:
                    continue
                raise KeyError(f"sample '{_describe_sample(d)}' has no {key!r}: {_NO_ID_FIX}")
            d[key] = self._to_id_tensor(d[key], key, d)
        return d

    @staticmethod
    def _to_id_tensor(value: Any, key: Hashable, data: Mapping) -> torch.Tensor:
        where = f"sample '{_describe_sample(data)}'"
        if isinstance(value, (torch.Tensor, np.ndarray)):
            if int(np.prod(value.shape)) != 1:
                raise ValueError(
                    f"{where} has a {key!r} of shape {tuple(value.shape)}: an id is one integer per sample; "
                    f"{_NO_ID_FIX}."
                )
            value = value.reshape(-1)[0].item()
        if isinstance(value, np.generic):
            value = value.item()
        integral = isinstance(value, numbers.Integral) or (isinstance(value, float) and value.is_integer())
        if isinstance(value, bool) or not integral:
            raise ValueError(f"{where} has {key!r} = {value!r}: an id is an integer; {_NO_ID_FIX}.")
        if value < 0:
            raise ValueError(f"{where} has {key!r} = {value}: ids are 0..N-1; {_NO_ID_FIX}.")
        return torch.tensor(int(value), dtype=torch.int64)


def refuse_uninformative(image: Any, path: Any, channel_first: bool = True) -> None:
    """Refuse an image that is certainly not a picture of anything: every channel holds one value everywhere (zero
    variance: blank, all-zero, a uniform grey export). A network still outputs landmarks, masks or boxes for such an
    input, and they mean nothing.

    Args:
        image: the image array or tensor, channel first (C, *spatial) unless ``channel_first`` is False (one channel).
        path: the file, for the message.
        channel_first: whether the first axis is the channel axis.

    Raises:
        ValueError: naming the file and its one value per channel.
    """
    t = torch.as_tensor(np.asarray(image) if not isinstance(image, torch.Tensor) else image).detach()
    t = t.reshape(t.shape[0], -1) if channel_first and t.ndim > 1 else t.reshape(1, -1)
    if t.numel() and bool((t.amax(1) == t.amin(1)).all()):
        values = ", ".join(f"{float(v):g}" for v in t[:, 0][:4])
        raise ValueError(
            f"The image {path} holds one value everywhere ({values} in each channel): it is blank, not a picture of "
            f"the task, and any prediction on it would be meaningless. Give the real image; nothing was written for it."
        )


class RefuseUninformatived(MapTransform):
    """:func:`refuse_uninformative` as a transform for inference pipelines.

    Args:
        keys: the image key(s) (channel first).
        path_key: the key of the file path for the message (default: the ``filename_or_obj`` of the image's metadata,
            else the sample's ``<key>_path``).
    """

    def __init__(self, keys: KeysCollection, path_key: str | None = None, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.path_key = path_key

    def __call__(self, data: Mapping[Hashable, Any]) -> Mapping[Hashable, Any]:
        for key in self.key_iterator(dict(data)):
            img = data[key]
            path = data.get(self.path_key) if self.path_key is not None else None
            if path is None:
                path = getattr(img, "meta", {}).get("filename_or_obj", data.get(f"{key}_path", f"under {key!r}"))
            refuse_uninformative(img, path)
        return data


class LoadCheckedImaged(MapTransform):
    """MONAI's ``LoadImaged`` (channel first) that refuses bad input and names the file.

    Inference must never write a silently wrong result: a file that cannot be read (truncated, not an image), an
    image with another number of channels or spatial dimensions than the network was trained on, or non-finite
    voxels (NaN, inf), or one value everywhere (:func:`refuse_uninformative`) stop the run with an error that names the file, what is wrong and the expected input, and
    nothing is written for it.

    Args:
        keys: the image key(s); their values are file paths.
        channels: the number of channels the network takes (MRI modalities), after ``ensure_channel_first``.
        spatial_dims: the number of spatial dimensions of the image file (3 for a volume).
        channel_names: what the channels are, for the messages (e.g. ``["T1"]`` or ``["T2", "ADC"]``).
        reader: the ``LoadImaged`` reader (default: chosen by MONAI from the file suffix).
        allow_missing_keys: do not raise when a key is missing.
    """

    def __init__(
        self,
        keys: KeysCollection,
        channels: int,
        spatial_dims: int = 3,
        channel_names: Sequence[str] | None = None,
        reader: Any = None,
        allow_missing_keys: bool = False,
    ) -> None:
        from monai.transforms import LoadImaged

        super().__init__(keys, allow_missing_keys)
        self.channels, self.spatial_dims = int(channels), int(spatial_dims)
        self.channel_names = list(channel_names) if channel_names is not None else None
        self.loader = LoadImaged(keys, reader=reader, image_only=True, ensure_channel_first=True,
                                 allow_missing_keys=allow_missing_keys)

    def _expected(self) -> str:
        names = f" ({', '.join(self.channel_names)})" if self.channel_names else ""
        return f"{self.spatial_dims}D images with {self.channels} channel(s){names}"

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        paths = {k: data[k] for k in self.key_iterator(dict(data))}
        try:
            out = self.loader(data)
        except Exception as e:
            path = next(iter(paths.values()), "?")
            raise ValueError(
                f"Cannot read the image {path} ({type(e).__name__}: {e}): the file is damaged or not an image "
                f"this bundle reads; replace it, or leave it out of the input."
            ) from e
        for key, path in paths.items():
            img = out[key]
            shape = tuple(img.shape)
            if len(shape) != self.spatial_dims + 1 or shape[0] != self.channels:
                raise ValueError(
                    f"The image {path} has shape {shape[1:] if len(shape) == self.spatial_dims + 1 else shape} with "
                    f"{shape[0]} channel(s) after loading (channel first: {shape}), but this model takes "
                    f"{self._expected()}: give such images."
                )
            finite = torch.isfinite(torch.as_tensor(img))
            if not bool(finite.all()):
                bad = int((~finite).sum())
                raise ValueError(
                    f"The image {path} has {bad} non-finite voxel(s) (NaN or inf) of {finite.numel()}: a prediction "
                    f"on it would be wrong. Repair or replace the file; nothing was written for it."
                )
            refuse_uninformative(img, path)
        return out
