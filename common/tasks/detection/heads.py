"""Reading RetinaNet head outputs the way ``RetinaNetDetector`` does: reshaped maps, anchors, decoded boxes.

The trainer, the attacks and the evaluator run the detector's *network* (``detector.network``, MONAI ``RetinaNet``) on
an image tensor; it returns raw head outputs, ``{cls_key: [maps per level], box_reg_key: [maps per level]}`` (or a
list of 2N maps). :class:`RetinaNetHeads` turns them into what the detector itself computes inside ``forward``, with
the detector's own methods and components:

- ``split``: the classification logits (B, A, num_classes) and box regressions (B, A, 2 * spatial_dims) over all A
  anchors, levels concatenated (``RetinaNetDetector._reshape_maps``), and the grid of every level;
- ``anchors``: the anchors (A, 2 * spatial_dims) of that grid (``detector.anchor_generator``), cached;
- ``decode``: boxes, labels and scores per image (``detector.postprocess_detections``: score threshold, top-k per level,
  NMS, detections per image).

A *packed* output, ``pack(...)`` = ``cat([logits, regressions], -1)`` of shape (B, A, num_classes + 2 * spatial_dims),
is also accepted everywhere: it is the single tensor the core's TEAT and AMAT code take from ``loss.primary``. Its
level grids are those of the last raw output of the same anchor count seen by this object (a network at a fixed
input size always has the same grids).

Image size: the anchors depend on the network input size (strides are ``input size // grid size``). It is inferred
as ``coarsest grid * network.size_divisible`` (exact for MONAI's RetinaNet, whose input must be divisible by the
coarsest stride), or given explicitly.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

__all__ = ["RetinaNetHeads"]


class RetinaNetHeads:
    """The detector's view of raw head outputs (no parameters, not an ``nn.Module``: it never moves or saves the network).

    Args:
        detector: the configured ``RetinaNetDetector`` whose components are used.
        image_size: the network input size (X, Y) in pixels; None infers it from the head outputs (see the module
            docstring).
    """

    def __init__(self, detector: Any, image_size: Sequence[int] | None = None) -> None:
        for attr in ("anchor_generator", "box_coder", "box_selector", "cls_key", "box_reg_key", "num_classes"):
            if not hasattr(detector, attr):
                raise TypeError(
                    f"{type(detector).__name__} has no {attr!r}: pass a monai.apps.detection RetinaNetDetector (see "
                    "robust_bundles.tasks.detection.build_detector)."
                )
        self.detector = detector
        self.spatial_dims = int(detector.spatial_dims)
        self.image_size = tuple(int(v) for v in image_size) if image_size is not None else None
        if self.image_size is not None and len(self.image_size) != self.spatial_dims:
            raise ValueError(f"image_size={image_size}: give {self.spatial_dims} sizes (the network input's spatial shape).")
        self._grids_by_count: dict[int, list[tuple[int, ...]]] = {}
        self._anchor_cache: dict[tuple, torch.Tensor] = {}

    @property
    def num_classes(self) -> int:
        return int(self.detector.num_classes)

    @property
    def box_dims(self) -> int:
        return 2 * self.spatial_dims

    # ------------------------------------------------------------------------------------------------------------------
    def _maps(self, pred: Any) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        det = self.detector
        if isinstance(pred, dict):
            if det.cls_key not in pred or det.box_reg_key not in pred:
                raise KeyError(
                    f"The network output has keys {list(pred)}, expected {det.cls_key!r} and {det.box_reg_key!r} "
                    "(the detector's cls_key and box_reg_key)."
                )
            cls, box = pred[det.cls_key], pred[det.box_reg_key]
            cls = [cls] if isinstance(cls, torch.Tensor) else list(cls)
            box = [box] if isinstance(box, torch.Tensor) else list(box)
        elif isinstance(pred, (list, tuple)) and pred and len(pred) % 2 == 0:
            half = len(pred) // 2
            cls, box = list(pred[:half]), list(pred[half:])
        else:
            raise TypeError(
                f"Cannot read RetinaNet head outputs from a {type(pred).__name__}: expected the network's dict "
                "{cls_key: [maps], box_reg_key: [maps]}, its list of 2N maps, or a packed (B, A, C + 2D) tensor."
            )
        if len(cls) != len(box):
            raise ValueError(f"{len(cls)} classification maps but {len(box)} box-regression maps.")
        return cls, box

    def split(self, pred: Any) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, ...]]]:
        """Classification logits (B, A, C), box regressions (B, A, 2D) and the grid of each level.

        Args:
            pred: raw head outputs, or a packed tensor (see the module docstring).
        """
        if isinstance(pred, torch.Tensor):
            width = self.num_classes + self.box_dims
            if pred.ndim != 3 or pred.shape[-1] != width:
                raise ValueError(
                    f"A packed RetinaNet output has shape (B, A, {width}) (classes + box codes); got {tuple(pred.shape)}."
                )
            grids = self._grids_by_count.get(int(pred.shape[1]))
            if grids is None:
                raise ValueError(
                    f"No raw network output with {pred.shape[1]} anchors was seen before this packed output, so its "
                    "feature-level grids are unknown: pass the network's raw output first."
                )
            return pred[..., : self.num_classes], pred[..., self.num_classes :], grids
        cls_maps, box_maps = self._maps(pred)
        grids = [tuple(int(s) for s in m.shape[2:]) for m in cls_maps]
        cls = self.detector._reshape_maps(cls_maps)
        box = self.detector._reshape_maps(box_maps)
        self._grids_by_count[int(cls.shape[1])] = grids
        return cls, box, grids

    def __call__(self, pred: Any) -> dict[str, torch.Tensor]:
        """The named heads of an output, as the loss names its terms: ``{"classification": (B, A, C) logits,
        "box_regression": (B, A, 2D) codes}`` (what ``loss.heads(output)`` gives the adversarial iterations, e.g.
        an ``output_activation`` ``{"classification": "sigmoid"}``)."""
        cls, box, _ = self.split(pred)
        return {"classification": cls, "box_regression": box}

    def pack(self, pred: Any) -> torch.Tensor:
        """The packed (B, A, C + 2D) tensor of a raw output (a packed tensor is returned as is)."""
        if isinstance(pred, torch.Tensor):
            self.split(pred)  # validates
            return pred
        cls, box, _ = self.split(pred)
        return torch.cat([cls, box], dim=-1)

    def input_size(self, grids: Sequence[Sequence[int]]) -> tuple[int, ...]:
        """The network input size for these level grids (explicit ``image_size`` or inferred)."""
        if self.image_size is not None:
            size = self.image_size
        else:
            div = getattr(self.detector, "size_divisible", None)
            div = tuple(int(v) for v in div) if div is not None else (1,) * self.spatial_dims
            if max(div) <= 1:
                raise ValueError(
                    "Cannot infer the network input size: the detector's size_divisible is 1. Give image_size (the "
                    "network input's spatial shape)."
                )
            size = tuple(g * d for g, d in zip(grids[-1], div))
        for g in grids:
            if any(s % n for s, n in zip(size, g)):
                raise ValueError(
                    f"Feature grid {tuple(g)} does not divide the input size {size}: image_size must be the network input "
                    "size (after resizing), divisible by network.size_divisible."
                )
        return tuple(size)

    def anchors(self, grids: Sequence[Sequence[int]], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """Anchors (A, 2D) in input pixels, identical for every image (cached per grid, dtype and device)."""
        size = self.input_size(grids)
        key = (tuple(tuple(g) for g in grids), size, dtype, str(device))
        if key not in self._anchor_cache:
            # The generator reads only shapes, dtype and device: zero-stride stand-ins avoid allocating feature maps.
            stub = torch.zeros((), dtype=dtype, device=device)
            images = stub.expand(1, 1, *size)
            maps = [stub.expand(1, 1, *g) for g in grids]
            with torch.no_grad():
                self._anchor_cache[key] = self.detector.anchor_generator(images, maps)[0]
        return self._anchor_cache[key]

    def decode(self, pred: Any) -> list[dict[str, torch.Tensor]]:
        """Detections per image with the detector's own post-processing (no gradients).

        Returns:
            One dict per image with the detector's keys: ``target_box_key`` (N, 2D) boxes in input pixels,
            ``target_label_key`` (N,) int64 class indices, ``pred_score_key`` (N,) scores in [0, 1].
        """
        with torch.no_grad():
            cls, box, grids = self.split(pred)
            anchors = self.anchors(grids, box.dtype, box.device)
            size = list(self.input_size(grids))
            det = self.detector
            n = cls.shape[0]
            locs = [int(torch.tensor(g).prod()) for g in grids]
            return det.postprocess_detections(
                {det.cls_key: cls.detach(), det.box_reg_key: box.detach()}, [anchors] * n, [size] * n, locs
            )
