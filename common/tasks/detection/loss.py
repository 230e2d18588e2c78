"""RetinaNet's training loss per image: terms ("classification", "box_regression"), shape (B, 2).

``RetinaNetDetector`` computes its loss inside ``forward`` in training mode, as one number per batch and per term.
AMAT's thresholds, margins and robustness test need it per image, and the attacks need it without the detector's
training-mode forward (which would move BatchNorm statistics). :class:`RetinaNetLoss` computes, from the *network's*
raw head outputs, exactly what the detector computes for each image, with the detector's own components: its anchors
(``anchor_generator``), its matcher (``compute_anchor_matched_idxs``: ATSS or IoU), its sampler
(``get_cls_train_sample_per_image``: hard-negative or balanced), its box coder (``get_box_train_sample_per_image``)
and its two loss functions (``cls_loss_func``, ``box_loss_func``).

Row b of ``terms`` is the detector's own loss of image b alone: ``detector.train(); detector([x_b], [t_b])`` with the
same network outputs and the same sampler draws. How the batch mean relates to the detector's batch loss:

- classification: the detector applies ``cls_loss_func`` (mean reduction) to the sampled anchors of all images
  concatenated, i.e. it weights image b by its number of sampled anchors n_b; the mean of the rows weights every image
  equally. They are equal when every image has the same n_b: always without a sampler (with the ATSS matcher every
  anchor is sampled), and with the hard-negative sampler when every image has at least
  ``int(batch_size_per_image * positive_fraction)`` positive anchors (n_b is then the same for every image: 63 with
  MONAI's lung-nodule settings 64 and 0.3, i.e. 19 positives and 44 negatives).
- box regression: the detector averages over the foreground anchors of all images (weights m_b = foreground anchors of
  image b, images without boxes weigh 0, and the loss is 0 when the batch has no box); the rows weight images equally,
  and an image without boxes has a box term of 0 that enters the mean. Equal when every image has the same m_b.

``counts(...)`` returns (n_b, m_b); ``(terms * counts).sum(0) / counts.sum(0)`` is the detector's batch loss exactly.

Sampling: MONAI's samplers draw with the global torch RNG. With ``sampling_seed`` set, every image's draws come from
that seed (the global RNG is left untouched), so the loss is a deterministic function of the outputs: what the
robustness test of AMAT (one loss evaluation per PGD iterate), threshold estimation and a reproducible attack objective
want. None keeps the detector's behaviour.

Input of the network (what the attacks perturb): the detector's image tensor (B, C, X, Y), RGB in [0, 1], at the
network input size; see :mod:`robust_bundles.tasks.detection`.
"""

from __future__ import annotations

import contextlib
from typing import Any, Sequence

import torch

from ...losses import PerSampleLoss
from .heads import RetinaNetHeads

__all__ = ["RetinaNetLoss"]


class RetinaNetLoss(PerSampleLoss):
    """Per-image RetinaNet loss terms from raw head outputs; a :class:`robust_bundles.losses.PerSampleLoss`.

    ``forward(pred, targets)`` is the per-image total ``w_cls * classification + w_box * box_regression`` (B,), so a
    stock ``SupervisedTrainer`` trains on its batch mean.

    Args:
        detector: the configured ``RetinaNetDetector`` (its network produces ``pred``).
        image_size: network input size (X, Y); None infers it (see :class:`RetinaNetHeads`).
        cls_weight: weight of the classification term in the total.
        box_weight: weight of the box-regression term in the total.
        sampling_seed: seed of the anchor sampler's draws for every image (see the module docstring); None uses the
            global RNG like the detector.

    ``pred`` is the network's raw output (dict or list of maps) or its packed tensor (:meth:`primary`); ``targets`` is
    a list of B dicts with the detector's ``target_box_key`` (float (N_b, 4) boxes in input pixels, ``StandardMode``)
    and ``target_label_key`` (int (N_b,) class indices); N_b may be 0.
    """

    term_names = ("classification", "box_regression")

    def __init__(
        self,
        detector: Any,
        image_size: Sequence[int] | None = None,
        cls_weight: float = 1.0,
        box_weight: float = 1.0,
        sampling_seed: int | None = None,
    ) -> None:
        super().__init__()
        # Kept outside the Module's registry: the loss must not own (move, save, switch the mode of) the network.
        self.__dict__["heads"] = RetinaNetHeads(detector, image_size)
        self.term_weights = (float(cls_weight), float(box_weight))
        self.sampling_seed = None if sampling_seed is None else int(sampling_seed)
        if not hasattr(detector, "proposal_matcher"):
            raise ValueError(
                "The detector has no anchor matcher: call detector.set_atss_matcher(...) or set_regular_matcher(...) "
                "(robust_bundles.tasks.detection.build_detector does)."
            )

    @property
    def detector(self) -> Any:
        return self.heads.detector

    def primary(self, pred: Any) -> torch.Tensor:
        """The packed (B, A, C + 2D) tensor: logits and box codes of every anchor (TEAT's soft target; ``terms`` takes it)."""
        return self.heads.pack(pred)

    def soft_target(self, pred: Any) -> torch.Tensor:
        """TEAT's per-image output to ensemble: class probabilities (sigmoid of the logits, RetinaNet's focal/BCE
        activation) and raw box codes of every anchor, flattened: (B, A * (C + 2D)) float32.

        Give it as ``TEATIteration(activation=loss.soft_target)``. Box codes of anchors matched to no object are
        included as they are (they carry no target but cost nothing to ensemble).
        """
        cls, box, _ = self.heads.split(pred)
        return torch.cat([cls.float().sigmoid(), box.float()], dim=-1).flatten(1)

    # ------------------------------------------------------------------------------------------------------------------
    def _targets(self, targets: Any, batch: int, device: torch.device) -> list[dict[str, torch.Tensor]]:
        det = self.detector
        bk, lk = det.target_box_key, det.target_label_key
        if not isinstance(targets, (list, tuple)) or len(targets) != batch:
            n = len(targets) if isinstance(targets, (list, tuple)) else type(targets).__name__
            raise ValueError(
                f"Detection targets must be a list of {batch} dicts (one per image) with keys {bk!r} and {lk!r}; got "
                f"{n}. Use robust_bundles.tasks.detection.DetectionPrepareBatch as the engine's prepare_batch."
            )
        out = []
        for b, t in enumerate(targets):
            if not isinstance(t, dict) or bk not in t or lk not in t:
                keys = list(t) if isinstance(t, dict) else type(t).__name__
                raise KeyError(f"Target {b} has {keys}; expected keys {bk!r} (boxes) and {lk!r} (labels).")
            boxes = torch.as_tensor(t[bk], device=device).float().reshape(-1, self.heads.box_dims)
            labels = torch.as_tensor(t[lk], device=device).long().reshape(-1)
            if boxes.shape[0] != labels.shape[0]:
                raise ValueError(f"Target {b} has {boxes.shape[0]} boxes but {labels.shape[0]} labels.")
            if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.heads.num_classes):
                raise ValueError(
                    f"Target {b} has labels in [{int(labels.min())}, {int(labels.max())}]; class indices lie in "
                    f"[0, {self.heads.num_classes - 1}] (the background is not a class)."
                )
            out.append({bk: boxes, lk: labels})
        return out

    def _rng(self, device: torch.device):
        if self.sampling_seed is None:
            return contextlib.nullcontext()
        devices = [device] if device.type == "cuda" else []
        return _seeded(self.sampling_seed, devices)

    def _per_image(self, pred: Any, targets: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 2) terms and (B, 2) counts (sampled anchors, foreground anchors)."""
        det = self.detector
        cls, box, grids = self.heads.split(pred)
        batch = cls.shape[0]
        tg = self._targets(targets, batch, cls.device)
        anchors = self.heads.anchors(grids, box.dtype, box.device)
        locs = [int(torch.tensor(g).prod()) for g in grids]
        matched = det.compute_anchor_matched_idxs([anchors] * batch, tg, locs)
        rows, counts = [], []
        for b in range(batch):
            with self._rng(cls.device):
                logits, gt = det.get_cls_train_sample_per_image(cls[b], tg[b], matched[b])
            cls_term = det.cls_loss_func(logits, gt).to(cls.dtype)
            codes, gt_codes = det.get_box_train_sample_per_image(box[b], tg[b], anchors, matched[b])
            if codes.shape[0]:
                box_term = det.box_loss_func(codes, gt_codes).to(box.dtype)
            else:  # no foreground anchor (e.g. an image without boxes): the detector's 0, kept in the graph
                box_term = box[b].sum() * 0.0
            rows.append(torch.stack([cls_term.reshape(()), box_term.reshape(())]))
            counts.append((logits.shape[0], codes.shape[0]))
        return torch.stack(rows), torch.tensor(counts, dtype=torch.float32, device=cls.device)

    def terms(self, pred: Any, target: Any) -> torch.Tensor:
        """Per-image loss terms (B, 2): [classification, box_regression]."""
        return self._per_image(pred, target)[0]

    def counts(self, pred: Any, target: Any) -> torch.Tensor:
        """(B, 2) float: the number of sampled anchors of the classification loss and of foreground anchors of the
        box loss of each image (the weights the detector's batch loss gives the rows of :meth:`terms`)."""
        with torch.no_grad():
            return self._per_image(pred, target)[1]


@contextlib.contextmanager
def _seeded(seed: int, devices: list):
    """Run with the torch RNG seeded, then restore the previous RNG state (the global stream is not consumed)."""
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
