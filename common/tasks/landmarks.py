"""Landmark detection by heatmap and offset regression: the multi-task U-Net of Yao et al. (MICCAI 2020).

For each of L landmarks the network predicts, at every pixel of its input, one heatmap logit (is the landmark within
``radius`` pixels of here?) and two offsets (where is it, relative to here, in units of ``radius``). Its output is one
tensor (B, 3L, H, W): channels ``[0, L)`` are the heatmap logits, ``[L, 2L)`` the x offsets, ``[2L, 3L)`` the y
offsets (:func:`split_heads`). Everything here is in the network's pixel frame unless it says otherwise.

Coordinates: a landmark is ``(x, y)`` = (column, row) in pixel-index units (the centre of pixel (row i, column j) is
(j, i)), as the ISBI 2015 annotations give them in the original image. An image resized from (H0, W0) to (H, W)
maps index coordinates by ``x' = (x + 0.5) W / W0 - 0.5`` (pixel areas scale, as an area/bilinear resize does):
:func:`to_network_frame`, :func:`to_original_frame`.

- Targets (:func:`landmark_targets`, :class:`LandmarkTargetsd`): heatmap 1 on the disk of radius R around the
  landmark, 0 elsewhere; offsets ``(x - j) / R`` and ``(y - i) / R`` on the disk, 0 elsewhere.
- Decoding (:func:`decode_landmarks`): the ``top_k`` pixels of highest heatmap probability each vote for
  ``pixel + R * offset``; the vote with the most (probability-weighted) votes within ``vote_radius`` pixels wins, and
  the landmark is the weighted mean of the votes within ``vote_radius`` of it (sub-pixel).
- Loss (:class:`LandmarkLoss`): three per-sample terms ("heatmap", "offset_x", "offset_y"): binary cross-entropy or
  soft Dice on the heatmaps, L1 of each offset map on the target disks. AMAT's threshold xi is a 3-vector.
- Metrics (:class:`LandmarkMetric`): mean radial error (MRE, mm, lower is better) and success detection rates (SDR,
  %, higher is better) at 2, 2.5, 3 and 4 mm, in the original frame with the pixel spacing of each image, overall and
  per landmark (``details()``).
- Inference (:class:`LandmarkWriter`): the landmarks of every image as JSON and CSV (original pixels and mm) and an
  overlay PNG; their confidence (:class:`LandmarkConfidence`: peak heatmap probability and vote agreement per
  landmark) in ``<stem>_confidence.json`` (:mod:`robust_bundles.confidence`).

The batch carries per-sample metadata for the metric and the writer: ``landmarks`` (L, 2) in original pixels,
``spacing`` (2,) mm per original pixel (x, y), ``orig_size`` (2,) the original (H0, W0).
"""

from __future__ import annotations

import csv
import io
import logging
import math
from pathlib import Path
from typing import Any, Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.transforms import MapTransform

from ..confidence import ConfidenceReport, Measure
from ..engine_io import engine_pred_and_batch
from ..io import atomic_write, atomic_write_json, atomic_write_text
from ..losses import PerSampleLoss, primary_output
from ..metrics import MetricSpec, PerSampleMetric, batch_value, nanmean

__all__ = [
    "split_heads",
    "init_heatmap_bias",
    "to_network_frame",
    "to_original_frame",
    "landmark_targets",
    "LandmarkTargetsd",
    "decode_landmarks",
    "LANDMARK_MEASURES",
    "LandmarkConfidence",
    "LandmarkLoss",
    "LandmarkMetric",
    "predict_landmarks",
    "LandmarkWriter",
    "LandmarkAdapter",
]

logger = logging.getLogger("robust_bundles.landmarks")

HEADS = ("heatmap", "offset_x", "offset_y")


def _check_output(pred: torch.Tensor, num_landmarks: int) -> None:
    if pred.ndim != 4 or pred.shape[1] != 3 * num_landmarks:
        raise ValueError(
            f"A landmark network output is (B, 3 x {num_landmarks}, H, W) (heatmaps, x offsets, y offsets); got shape "
            f"{tuple(pred.shape)}. Set the network's out_channels to {3 * num_landmarks}."
        )


def split_heads(pred: torch.Tensor, num_landmarks: int) -> dict[str, torch.Tensor]:
    """``{"heatmap", "offset_x", "offset_y"}``: the three (B, L, H, W) channel groups of a (B, 3L, H, W) output."""
    _check_output(pred, num_landmarks)
    n = num_landmarks
    return {"heatmap": pred[:, :n], "offset_x": pred[:, n : 2 * n], "offset_y": pred[:, 2 * n :]}


def init_heatmap_bias(network: torch.nn.Module, num_landmarks: int, prior: float = 0.01) -> torch.nn.Module:
    """Start the heatmap logits at ``logit(prior)`` instead of 0 (the prior-probability initialisation of RetinaNet's
    classification head): a landmark's disk covers about 1 % of the image, and a network that starts at p = 0.5 on
    every pixel first spends many iterations learning the background. Offsets are left as they are.

    The bias of the network's last convolution with ``3 * num_landmarks`` output channels is set; returns the network.

    Raises:
        ValueError: the network has no such convolution with a bias.
    """
    if not 0 < prior < 1:
        raise ValueError(f"prior must lie in (0, 1); got {prior}.")
    convs = [m for m in network.modules() if isinstance(m, torch.nn.modules.conv._ConvNd)
             and m.out_channels == 3 * num_landmarks and m.bias is not None]
    if not convs:
        raise ValueError(f"{type(network).__name__} has no convolution with {3 * num_landmarks} output channels and a "
                         f"bias: the heatmap bias cannot be initialised (set the output channels to 3 x landmarks).")
    with torch.no_grad():
        convs[-1].bias[:num_landmarks] = math.log(prior / (1 - prior))
    return network


def _as_sizes(size: Any, batch: int | None = None) -> torch.Tensor:
    """(H, W) or (B, 2) sizes as float64 (B or 1, 2)."""
    t = torch.as_tensor(np.asarray(size, dtype=np.float64) if not isinstance(size, torch.Tensor) else size)
    t = t.double().reshape(-1, 2)
    return t


def to_network_frame(points: Any, orig_size: Any, net_size: Any) -> torch.Tensor:
    """Original-frame index coordinates (..., L, 2) as (x, y) -> network-frame coordinates.

    Args:
        points: (L, 2) or (B, L, 2), (x, y) in pixels of the original image.
        orig_size: (H0, W0) or (B, 2): the original image size.
        net_size: (H, W) or (B, 2): the network input size.
    """
    p = torch.as_tensor(points).double()
    scale = _as_sizes(net_size).flip(-1) / _as_sizes(orig_size).flip(-1)  # (W/W0, H/H0) as (x, y)
    scale = scale if p.ndim == 3 else scale[0]
    return (p + 0.5) * scale.unsqueeze(-2) - 0.5


def to_original_frame(points: Any, orig_size: Any, net_size: Any) -> torch.Tensor:
    """Network-frame coordinates (..., L, 2) -> original-frame index coordinates (inverse of :func:`to_network_frame`)."""
    p = torch.as_tensor(points).double()
    scale = _as_sizes(orig_size).flip(-1) / _as_sizes(net_size).flip(-1)
    scale = scale if p.ndim == 3 else scale[0]
    return (p + 0.5) * scale.unsqueeze(-2) - 0.5


def landmark_targets(points: Any, size: Sequence[int], radius: float) -> torch.Tensor:
    """The training target of one image: (3L, H, W) float32 = heatmaps, x offsets, y offsets.

    Args:
        points: (L, 2) landmark coordinates (x, y) in the network frame (pixels).
        size: (H, W) of the network input.
        radius: R, the disk radius in pixels (> 0); offsets are in units of R.
    """
    if not radius > 0:
        raise ValueError(f"The heatmap radius must be > 0 pixels; got {radius}.")
    p = torch.as_tensor(points, dtype=torch.float64).reshape(-1, 2)
    h, w = int(size[0]), int(size[1])
    ys = torch.arange(h, dtype=torch.float64).reshape(1, h, 1)
    xs = torch.arange(w, dtype=torch.float64).reshape(1, 1, w)
    dx = p[:, 0].reshape(-1, 1, 1) - xs  # (L, 1, W) -> broadcast (L, H, W)
    dy = p[:, 1].reshape(-1, 1, 1) - ys
    disk = (dx**2 + dy**2) <= radius**2
    heat = disk.double()
    ox = torch.where(disk, dx / radius, torch.zeros(()).double())
    oy = torch.where(disk, dy / radius, torch.zeros(()).double())
    return torch.cat([heat, ox.expand_as(heat), oy.expand_as(heat)], 0).float()


class LandmarkTargetsd(MapTransform):
    """Make the (3L, H, W) training target of a sample from its original-frame landmarks.

    Args:
        keys: the key of the landmarks (L, 2) in original pixels (default ``"landmarks"``).
        radius: R, the heatmap disk radius in network pixels.
        image_key: the image (C, H, W) whose spatial size is the network frame.
        orig_size_key: the original (H0, W0) of the image.
        label_key: where the target goes.
    """

    def __init__(self, keys: KeysCollection = "landmarks", radius: float = 8.0, image_key: str = "image",
                 orig_size_key: str = "orig_size", label_key: str = "label", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if not radius > 0:
            raise ValueError(f"The heatmap radius must be > 0 pixels; got {radius}.")
        self.radius = float(radius)
        self.image_key, self.orig_size_key, self.label_key = image_key, orig_size_key, label_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            for needed in (self.image_key, self.orig_size_key):
                if needed not in d:
                    raise KeyError(f"LandmarkTargetsd needs {needed!r} in the sample (it has {sorted(map(str, d))}).")
            size = tuple(np.asarray(d[self.image_key]).shape[-2:]) if not isinstance(d[self.image_key], torch.Tensor) \
                else tuple(d[self.image_key].shape[-2:])
            points = to_network_frame(torch.as_tensor(np.asarray(d[key], dtype=np.float64)),
                                      torch.as_tensor(np.asarray(d[self.orig_size_key])), size)
            d[self.label_key] = landmark_targets(points, size, self.radius)
        return d


def _vote(pred: torch.Tensor, num_landmarks: int, radius: float, top_k: int | None,
          vote_radius: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Offset voting: the landmarks (B, L, 2) in the network frame, the peak heatmap probability (B, L) and the vote
    agreement (B, L), the share of the top-k vote weight within ``vote_radius`` of the winning vote."""
    p = primary_output(pred).detach().float()
    heads = split_heads(p, num_landmarks)
    b, n, h, w = heads["heatmap"].shape
    k = int(top_k) if top_k is not None else int(math.ceil(math.pi * radius**2))
    k = max(1, min(k, h * w))
    prob = heads["heatmap"].sigmoid().flatten(2)  # (B, L, HW)
    weight, idx = prob.topk(k, dim=2)
    xs = (idx % w).float() + radius * heads["offset_x"].flatten(2).gather(2, idx)
    ys = torch.div(idx, w, rounding_mode="floor").float() + radius * heads["offset_y"].flatten(2).gather(2, idx)
    votes = torch.stack([xs, ys], -1)  # (B, L, k, 2)
    near = (torch.cdist(votes.reshape(b * n, k, 2), votes.reshape(b * n, k, 2)) <= vote_radius).float()
    support = (near * weight.reshape(b * n, 1, k)).sum(-1)  # (B L, k)
    best = support.argmax(-1)
    chosen = near[torch.arange(b * n), best] * weight.reshape(b * n, k)  # weights of the votes near the winner
    point = (chosen.unsqueeze(-1) * votes.reshape(b * n, k, 2)).sum(1) / chosen.sum(1, keepdim=True).clamp_min(1e-12)
    agreement = chosen.sum(1) / weight.reshape(b * n, k).sum(1).clamp_min(1e-12)
    return point.reshape(b, n, 2), weight[..., 0], agreement.reshape(b, n)


def decode_landmarks(pred: torch.Tensor, num_landmarks: int, radius: float, top_k: int | None = None,
                     vote_radius: float = 1.0) -> torch.Tensor:
    """Landmark coordinates (B, L, 2) as (x, y) in the network frame, by offset voting (module docstring).

    Args:
        pred: the network output (B, 3L, H, W) (logits and offsets), or a tuple/dict holding it.
        num_landmarks: L.
        radius: R of the targets the network was trained on (offsets are in units of R).
        top_k: how many pixels vote per landmark; default the number of pixels of a disk of radius R (pi R^2).
        vote_radius: pixels: votes this close count for each other, and are averaged into the result.
    """
    return _vote(pred, num_landmarks, radius, top_k, vote_radius)[0]


LANDMARK_MEASURES = (
    Measure("peak", "mean over the landmarks of the peak heatmap probability (1 = certain, 0 = nothing found)"),
    Measure("agreement", "mean over the landmarks of the vote agreement: the share of the top-k votes' weight that "
            "points within vote_radius of the chosen position (1 = all votes agree)"),
)
"""The landmark family's confidence measures (:mod:`robust_bundles.confidence`)."""


class LandmarkConfidence:
    """The confidence of a batch of landmark outputs: per landmark the peak heatmap probability and the vote agreement
    (:func:`_vote`), per image their means (``LANDMARK_MEASURES``).

    Args:
        num_landmarks: L.
        radius: R of the network's targets (pixels).
        top_k, vote_radius: decoding settings (:func:`decode_landmarks`).
    """

    measures = LANDMARK_MEASURES

    def __init__(self, num_landmarks: int, radius: float, top_k: int | None = None, vote_radius: float = 1.0) -> None:
        self.num_landmarks, self.radius, self.top_k, self.vote_radius = int(num_landmarks), float(radius), top_k, \
            float(vote_radius)

    def per_landmark(self, pred: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(peak (B, L), agreement (B, L))."""
        _, peak, agreement = _vote(pred, self.num_landmarks, self.radius, self.top_k, self.vote_radius)
        return peak.cpu(), agreement.cpu()

    def __call__(self, pred: Any, batch: Any = None) -> dict[str, torch.Tensor]:
        """Per image ``{"peak": (B,), "agreement": (B,)}``."""
        peak, agreement = self.per_landmark(pred)
        return {"peak": peak.mean(1), "agreement": agreement.mean(1)}


class LandmarkLoss(PerSampleLoss):
    """The multi-task loss, per sample: terms ("heatmap", "offset_x", "offset_y").

    - heatmap, ``"bce"``: binary cross-entropy of the heatmap logits against the target disks, mean over the L
      landmarks and all pixels; ``"dice"``: ``1 - soft Dice`` of the sigmoid heatmap and the disk, per landmark
      (``(2 sum(p t) + s) / (sum p + sum t + s)``), mean over the landmarks (the paper's more robust variant);
    - offset_x, offset_y: mean absolute error of the offset maps over the pixels of the target disks (units of R).

    Args:
        num_landmarks: L.
        heatmap_loss: "bce" or "dice".
        heatmap_weight, offset_weight: weights of the terms in the per-sample total.
        smooth: s of the soft Dice (pixels).
    """

    term_names = HEADS

    def __init__(self, num_landmarks: int, heatmap_loss: str = "bce", heatmap_weight: float = 1.0,
                 offset_weight: float = 1.0, smooth: float = 1.0) -> None:
        super().__init__()
        if heatmap_loss not in ("bce", "dice"):
            raise ValueError(f"heatmap_loss must be 'bce' or 'dice'; got {heatmap_loss!r}.")
        if int(num_landmarks) < 1:
            raise ValueError(f"num_landmarks must be >= 1; got {num_landmarks}.")
        self.num_landmarks = int(num_landmarks)
        self.heatmap_loss = heatmap_loss
        self.term_weights = (float(heatmap_weight), float(offset_weight), float(offset_weight))
        self.smooth = float(smooth)

    def heads(self, pred: Any) -> dict[str, torch.Tensor]:
        """The named heads of an output (for TEAT's activation by head)."""
        return split_heads(primary_output(pred), self.num_landmarks)

    def terms(self, pred: Any, target: torch.Tensor) -> torch.Tensor:
        p = primary_output(pred).float()
        out, tgt = self.heads(p), split_heads(torch.as_tensor(target).float(), self.num_landmarks)
        if p.shape != target.shape:
            raise ValueError(f"Output shape {tuple(p.shape)} and target shape {tuple(target.shape)} differ: the "
                             f"targets must be made at the network input size (LandmarkTargetsd after resizing).")
        disk = tgt["heatmap"]
        if self.heatmap_loss == "bce":
            heat = F.binary_cross_entropy_with_logits(out["heatmap"], disk, reduction="none").flatten(1).mean(1)
        else:
            prob = out["heatmap"].sigmoid()
            inter = (prob * disk).flatten(2).sum(2)
            denom = prob.flatten(2).sum(2) + disk.flatten(2).sum(2)
            heat = (1 - (2 * inter + self.smooth) / (denom + self.smooth)).mean(1)
        area = disk.flatten(1).sum(1).clamp_min(1.0)
        off_x = ((out["offset_x"] - tgt["offset_x"]).abs() * disk).flatten(1).sum(1) / area
        off_y = ((out["offset_y"] - tgt["offset_y"]).abs() * disk).flatten(1).sum(1) / area
        return torch.stack([heat, off_x, off_y], dim=1)


class LandmarkMetric(PerSampleMetric):
    """MRE (mm) and SDR (%) at a list of radii, per sample and per landmark (see the module docstring).

    Per sample: MRE = mean over its L landmarks of the radial error ``|| (pred - truth) * spacing ||`` in mm, in the
    original frame; SDR_r = percentage of its landmarks within r mm. The means over samples are the overall MRE and
    SDR (every sample has L landmarks). ``details()`` gives them per landmark, with the standard deviation of the
    radial error.

    Args:
        num_landmarks: L.
        radius: R of the network's targets (pixels), for decoding.
        sdr_mm: the SDR radii in mm (the challenge's 2, 2.5, 3, 4).
        top_k, vote_radius: decoding settings (:func:`decode_landmarks`).
        landmarks_key, spacing_key, orig_size_key: batch keys of the metadata.
        landmark_names: names for ``details()`` (default "1".."L").
    """

    def __init__(self, num_landmarks: int, radius: float, sdr_mm: Sequence[float] = (2.0, 2.5, 3.0, 4.0),
                 top_k: int | None = None, vote_radius: float = 1.0, landmarks_key: str = "landmarks",
                 spacing_key: str = "spacing", orig_size_key: str = "orig_size",
                 landmark_names: Sequence[str] | None = None) -> None:
        super().__init__()
        self.num_landmarks, self.radius = int(num_landmarks), float(radius)
        self.sdr_mm = tuple(float(r) for r in sdr_mm)
        self.top_k, self.vote_radius = top_k, float(vote_radius)
        self.landmarks_key, self.spacing_key, self.orig_size_key = landmarks_key, spacing_key, orig_size_key
        names = list(landmark_names) if landmark_names is not None else [str(i + 1) for i in range(self.num_landmarks)]
        if len(names) != self.num_landmarks:
            raise ValueError(f"{len(names)} landmark names for {self.num_landmarks} landmarks.")
        self.landmark_names = names
        self.specs = (
            MetricSpec("MRE", "mm", False, "mean radial error of the landmarks in the original image"),
            *(MetricSpec(f"SDR_{r:g}mm", "%", True, f"landmarks within {r:g} mm of the truth") for r in self.sdr_mm),
        )
        self._errors: list[torch.Tensor] = []

    def reset(self) -> None:
        super().reset()
        self._errors = []

    def radial_errors(self, output: Any, batch: Any) -> torch.Tensor:
        """(B, L) radial errors in mm of a batch."""
        pred = primary_output(output)
        points = predict_landmarks(pred, batch_value(batch, self.orig_size_key, what="landmark metric"),
                                   self.num_landmarks, self.radius, self.top_k, self.vote_radius)
        truth = batch_value(batch, self.landmarks_key, what="landmark metric").double().reshape(points.shape)
        spacing = batch_value(batch, self.spacing_key, what="landmark metric").double().reshape(-1, 1, 2)
        return (((points - truth) * spacing) ** 2).sum(-1).sqrt()

    def compute(self, output: Any, batch: Any) -> dict[str, torch.Tensor]:
        err = self.radial_errors(output, batch).float()
        self._errors.append(err.cpu())
        values = {"MRE": err.mean(1)}
        for spec, r in zip(self.specs[1:], self.sdr_mm):
            values[spec.name] = (err <= r).float().mean(1) * 100
        return values

    def errors(self) -> torch.Tensor:
        """Every radial error since ``reset``: (N, L) mm."""
        return torch.cat(self._errors) if self._errors else torch.zeros(0, self.num_landmarks)

    def details(self) -> dict:
        err = self.errors()
        if not err.numel():
            return {}
        out = {"MRE_std": float(err.std()) if err.numel() > 1 else 0.0, "per_landmark": {}}
        for j, name in enumerate(self.landmark_names):
            e = err[:, j]
            row = {"MRE": nanmean(e), "std": float(e.std()) if e.numel() > 1 else 0.0}
            row.update({f"SDR_{r:g}mm": float((e <= r).float().mean() * 100) for r in self.sdr_mm})
            out["per_landmark"][name] = row
        return out


def predict_landmarks(pred: Any, orig_size: Any, num_landmarks: int, radius: float, top_k: int | None = None,
                      vote_radius: float = 1.0) -> torch.Tensor:
    """Landmarks (B, L, 2) as (x, y) in original-frame pixels, from the network output and the original sizes (B, 2)."""
    p = primary_output(pred)
    net = decode_landmarks(p, num_landmarks, radius, top_k, vote_radius).double().cpu()
    orig = torch.as_tensor(orig_size).double().reshape(-1, 2).cpu()
    return to_original_frame(net, orig, torch.tensor(p.shape[-2:], dtype=torch.float64).expand_as(orig))


class LandmarkWriter:
    """Ignite handler of an inference run: per image, its landmarks as JSON and CSV and an overlay PNG.

    Files in ``output_dir``, named after the input image: ``<stem>_landmarks.json`` (image path, size, spacing, and
    per landmark its name, x and y in original pixels and in mm from the top-left corner), ``<stem>_landmarks.csv``
    (the same, one row per landmark) and ``<stem>_overlay.png`` (the image, at most ``overlay_size`` pixels high, with
    the numbered landmarks). Written whole (temporary file, then rename). Under DDP each rank writes its own images.

    Args:
        output_dir: the folder for the files (created).
        num_landmarks: L.
        radius: R of the network's targets (pixels), for decoding.
        landmark_names: names of the landmarks (default "1".."L").
        overlay_size: height of the overlay PNG in pixels (0 for no overlay).
        top_k, vote_radius: decoding settings.
        image_key, orig_size_key, spacing_key: batch keys (the image key holds the input path in ``<key>_path`` or in
            the image's ``filename_or_obj`` metadata).
        confidence: the run's :class:`robust_bundles.confidence.ConfidenceReport`: per image
            ``<stem>_confidence.json`` with the peak heatmap probability and vote agreement of every landmark.
    """

    def __init__(self, output_dir: str, num_landmarks: int, radius: float, landmark_names: Sequence[str] | None = None,
                 overlay_size: int = 800, top_k: int | None = None, vote_radius: float = 1.0,
                 image_key: str = "image", orig_size_key: str = "orig_size", spacing_key: str = "spacing",
                 confidence: ConfidenceReport | None = None) -> None:
        self.output_dir = Path(output_dir)
        self.num_landmarks, self.radius = int(num_landmarks), float(radius)
        self.names = list(landmark_names) if landmark_names is not None else [
            str(i + 1) for i in range(self.num_landmarks)]
        self.overlay_size = int(overlay_size)
        self.top_k, self.vote_radius = top_k, float(vote_radius)
        self.image_key, self.orig_size_key, self.spacing_key = image_key, orig_size_key, spacing_key
        self.confidence = confidence
        self.measure = LandmarkConfidence(self.num_landmarks, self.radius, top_k, vote_radius)
        self.written: list[Path] = []

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def _paths(self, batch: Mapping) -> list[str]:
        key = f"{self.image_key}_path"
        if key in batch:
            return [str(p) for p in batch[key]]
        raise KeyError(f"LandmarkWriter needs the input paths in the batch key {key!r} (robust_bundles.data.ceph"
                       f".LoadXrayd puts them there).")

    def __call__(self, engine) -> None:
        pred, batch = engine_pred_and_batch(engine)
        orig = batch_value(batch, self.orig_size_key, what="landmark writer")
        spacing = batch_value(batch, self.spacing_key, what="landmark writer").double().reshape(-1, 2)
        points = predict_landmarks(pred, orig, self.num_landmarks, self.radius, self.top_k, self.vote_radius)
        peak, agreement = self.measure.per_landmark(pred) if self.confidence is not None else (None, None)
        for b, path in enumerate(self._paths(batch)):
            self.write_one(path, points[b], spacing[b], orig[b])
            if self.confidence is not None:
                rows = [{"landmark": i + 1, "name": self.names[i], "peak": round(float(peak[b, i]), 4),
                         "agreement": round(float(agreement[b, i]), 4)} for i in range(self.num_landmarks)]
                values = {"peak": float(peak[b].mean()), "agreement": float(agreement[b].mean())}
                self.written.append(self.confidence.add(path, values, {"per_landmark": rows}))

    def write_one(self, image_path: str, points: torch.Tensor, spacing: torch.Tensor, orig_size: torch.Tensor) -> None:
        """Write the JSON, CSV and overlay of one image (points (L, 2) original pixels, spacing (2,) mm)."""
        stem = Path(image_path).name.rsplit(".", 1)[0]
        sx, sy = round(float(spacing[0]), 6), round(float(spacing[1]), 6)  # float32 in the batch: 0.1 -> 0.1000000015
        rows = [{"landmark": i + 1, "name": self.names[i], "x_px": round(x, 2), "y_px": round(y, 2),
                 "x_mm": round(x * sx, 3), "y_mm": round(y * sy, 3)} for i, (x, y) in enumerate(points.tolist())]
        record = {"image": str(image_path), "height_px": int(orig_size[0]), "width_px": int(orig_size[1]),
                  "spacing_mm": [sx, sy], "origin": "pixel (0, 0) = top-left pixel centre; x right, y down",
                  "landmarks": rows}
        self.written.append(atomic_write_json(self.output_dir / f"{stem}_landmarks.json", record))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        self.written.append(atomic_write_text(self.output_dir / f"{stem}_landmarks.csv", buf.getvalue()))
        if self.overlay_size > 0:
            self.written.append(self._overlay(image_path, points, self.output_dir / f"{stem}_overlay.png"))
        logger.info(f"landmarks of {image_path} written to {self.output_dir}/{stem}_landmarks.json")

    def _overlay(self, image_path: str, points: torch.Tensor, out: Path) -> Path:
        from PIL import Image, ImageDraw

        with Image.open(image_path) as im:
            if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):  # deeper than 8 bits: at the reader's scale
                from ..data.ceph import read_xray

                im = Image.fromarray(np.round(read_xray(image_path)[0] * 255).astype(np.uint8)).convert("RGB")
            else:
                im = im.convert("RGB")
            scale = min(1.0, self.overlay_size / im.height)
            if scale < 1.0:
                im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.BILINEAR)
            draw = ImageDraw.Draw(im)
            r = max(2, round(im.height / 150))
            for i, (x, y) in enumerate(points.tolist()):
                cx, cy = (x + 0.5) * scale - 0.5, (y + 0.5) * scale - 0.5
                draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=(255, 40, 40), width=max(1, r // 2))
                draw.text((cx + r + 1, cy - r - 1), str(i + 1), fill=(255, 220, 0))
            return atomic_write(out, lambda tmp: im.save(tmp, format="PNG", optimize=True))


class LandmarkAdapter:
    """Landmark detection in the task contract (:class:`robust_bundles.tasks.TaskAdapter`): heatmap + offset terms per
    sample, MRE/SDR in mm, MONAI's batch layout, offset-vote decoding, peak and agreement confidence.

    Args:
        num_landmarks: L.
        radius: R of the heatmap disks (pixels).
        loss_settings: keywords of :class:`LandmarkLoss`.
    """

    name = "landmarks"
    id_keys = ("sample_id", "case")
    output_activation = {"heatmap": "sigmoid", "offset_x": "none", "offset_y": "none"}

    def __init__(self, num_landmarks: int, radius: float, **loss_settings: Any) -> None:
        self.num_landmarks, self.radius = int(num_landmarks), float(radius)
        self.loss_settings = loss_settings

    def loss(self) -> LandmarkLoss:
        return LandmarkLoss(self.num_landmarks, **self.loss_settings)

    def metric(self) -> LandmarkMetric:
        return LandmarkMetric(self.num_landmarks, self.radius)

    def collate_fn(self) -> None:
        return None  # images, target maps and point arrays stack into tensors

    def prepare_batch(self) -> None:
        return None  # (image, target maps)

    def decode(self, pred: Any) -> torch.Tensor:
        return decode_landmarks(primary_output(pred), self.num_landmarks, self.radius)

    def confidence(self) -> LandmarkConfidence:
        return LandmarkConfidence(self.num_landmarks, self.radius)
