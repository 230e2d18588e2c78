"""Image + boxes preprocessing for the detection bundles: load, scale to [0, 1], resize to the network input size.

The network input is the image as MONAI's ``PILReader`` loads it, channel first: (C, X, Y) with X along image
columns and Y along rows, RGB scaled to [0, 1] (``value / 255``, no per-image normalisation, so the attack's eps means
the same on every image), resized to ``image_size`` with its boxes scaled the same way (MONAI ``ResizeBox``). Resizing
by a different factor per axis keeps every IoU, so a metric computed at the network input size equals the one in the
original frame; :func:`boxes_to_original` maps predictions back for output files.
"""

from __future__ import annotations

from typing import Any, Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.transforms import (
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    MapTransform,
    Resize,
    ScaleIntensityRanged,
)
from monai.utils import convert_to_tensor

from ...transforms import RefuseUninformatived

__all__ = ["ResizeBoxd", "boxes_to_original", "detection_preprocessing"]


def _resize_boxes(boxes: Any, src: Sequence[int], dst: Sequence[int]) -> torch.Tensor:
    from monai.apps.detection.transforms.box_ops import resize_boxes

    b = convert_to_tensor(boxes, dtype=torch.float32, track_meta=False).reshape(-1, 2 * len(src))
    return resize_boxes(b, tuple(int(s) for s in src), tuple(int(s) for s in dst))


def boxes_to_original(boxes: Any, network_size: Sequence[int], original_size: Sequence[int]) -> torch.Tensor:
    """Boxes (N, 2D) from network-input pixels to the original image's pixels (the inverse of :class:`ResizeBoxd`)."""
    return _resize_boxes(boxes, network_size, original_size)


class ResizeBoxd(MapTransform):
    """Resize the image to ``spatial_size`` and scale its boxes by the same factors; record the size before resizing.

    Args:
        keys: the image key(s) (C, *spatial).
        box_keys: the key(s) of the boxes (N, 2 * spatial_dims), ``StandardMode`` in pixels of the image.
        spatial_size: the network input size (X, Y).
        mode: interpolation (``"area"``: pixel averages, right for shrinking; see ``monai.transforms.Resize``).
        size_key: key receiving the spatial size before resizing, a list of ints (None: not written).
        allow_missing_keys: do not raise when a key is absent (e.g. no boxes at inference).
    """

    def __init__(
        self,
        keys: KeysCollection,
        box_keys: KeysCollection = "boxes",
        spatial_size: Sequence[int] = (320, 320),
        mode: str = "area",
        size_key: str | None = "original_size",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.box_keys = (box_keys,) if isinstance(box_keys, str) else tuple(box_keys)
        self.spatial_size = tuple(int(s) for s in spatial_size)
        if not self.spatial_size or min(self.spatial_size) < 1:
            raise ValueError(f"spatial_size={spatial_size}: give the positive network input size, e.g. (320, 320).")
        self.resize = Resize(self.spatial_size, mode=mode)
        self.size_key = size_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        src = None
        for key in self.key_iterator(d):
            img = d[key]
            size = tuple(int(s) for s in img.shape[1:])
            if len(size) != len(self.spatial_size):
                raise ValueError(
                    f"{key!r} has spatial shape {size} but spatial_size is {self.spatial_size}: give one size per "
                    "spatial axis of the channel-first image."
                )
            if src is not None and size != src:
                raise ValueError(f"Images of one sample have different sizes {src} and {size}.")
            src = size
            d[key] = self.resize(img)
        if src is None:
            return d
        for key in self.box_keys:
            if key in d:
                d[key] = _resize_boxes(d[key], src, self.spatial_size)
            elif not self.allow_missing_keys:
                raise KeyError(f"No boxes under {key!r} (the sample has {sorted(map(str, d))}).")
        if self.size_key is not None:
            d[self.size_key] = list(src)
        return d


def detection_preprocessing(
    image_size: Sequence[int],
    image_key: str = "image",
    box_key: str = "boxes",
    label_key: str = "labels",
    with_boxes: bool = True,
) -> list:
    """The deterministic transforms from a datalist item (image path, boxes, labels) to a network sample.

    Load (``PILReader``: (X, Y) = (columns, rows)), channel first, ``[0, 255] -> [0, 1]``, resize with boxes to
    ``image_size``, boxes float32 and labels int64. Put ``robust_bundles.transforms.SampleIdd`` after it for samples
    that need a margin.

    Args:
        image_size: network input size (X, Y), divisible by the network's ``size_divisible``.
        image_key, box_key, label_key: the item's keys.
        with_boxes: False for inference (no boxes or labels in the item; a blank image, one value everywhere, is
            refused by :class:`robust_bundles.transforms.RefuseUninformatived`).
    """
    out = [
        LoadImaged(keys=image_key, reader="PILReader", image_only=True),
        EnsureChannelFirstd(keys=image_key),
        *([] if with_boxes else [RefuseUninformatived(keys=image_key)]),
        ScaleIntensityRanged(keys=image_key, a_min=0.0, a_max=255.0, b_min=0.0, b_max=1.0, clip=True),
        EnsureTyped(keys=image_key, dtype=torch.float32, track_meta=False),
        ResizeBoxd(keys=image_key, box_keys=box_key, spatial_size=image_size, allow_missing_keys=not with_boxes),
    ]
    if with_boxes:
        out += [
            EnsureTyped(keys=box_key, dtype=torch.float32, track_meta=False),
            EnsureTyped(keys=label_key, dtype=torch.long, track_meta=False),
        ]
    return out
