"""A 2D RetinaNet detector out of MONAI's parts, sized by a few config values.

:func:`build_detector` returns a configured ``monai.apps.detection.networks.retinanet_detector.RetinaNetDetector``;
its ``.network`` (a MONAI ``RetinaNet``: ResNet backbone, feature pyramid network, classification and box-regression
heads) is what the trainer trains, checkpoints and the attacks differentiate. The detector object itself holds the
anchor generator, the anchor matcher, the sampler, the box coder, the classification and box-regression losses and the
box selector (score threshold, NMS), which :class:`~robust_bundles.tasks.detection.RetinaNetLoss`,
:class:`~robust_bundles.tasks.detection.COCODetectionMetric` and the inference helpers reuse.

Feature levels: ResNet layer ``l`` has stride ``conv1_stride * 2 (max pool) * 2**(l - 1)`` (4, 8, 16, 32 with the
defaults); the FPN adds one max-pooled level at twice the coarsest stride. The network input must be divisible by that
last stride (``network.size_divisible``; 32 for ``returned_layers=(1, 2, 3)``, 64 for ``(2, 3, 4)``). Anchors at level
``i`` are ``base_anchor_shapes * stride_i / stride_0`` (MONAI ``AnchorGeneratorWithAnchorShape``).

The heads run 4 convolutions of ``fpn_channels`` on every level, so most of the compute is in the finest level:
``returned_layers=(2, 3)`` (strides 8, 16, 32) or fewer ``fpn_channels`` are the cheap options on a CPU.
"""

from __future__ import annotations

from typing import Sequence

import torch
from monai.networks.nets import resnet

__all__ = ["BACKBONES", "build_retinanet", "build_detector", "level_strides"]

#: ResNet depth -> (block type, blocks per layer), as MONAI's resnet10/18/34/50.
BACKBONES: dict[str, tuple[str, list[int]]] = {
    "resnet10": ("basic", [1, 1, 1, 1]),
    "resnet18": ("basic", [2, 2, 2, 2]),
    "resnet34": ("basic", [3, 4, 6, 3]),
    "resnet50": ("bottleneck", [3, 4, 6, 3]),
}


def _detection_modules():
    """MONAI's detection classes (they import torchvision: install the ``detection`` extra)."""
    try:
        import torchvision  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "MONAI's RetinaNet needs torchvision: pip install -e \".[detection]\" (on the project's machines "
            "torch==2.14.1 with torchvision==0.29.1)."
        ) from e
    from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
    from monai.apps.detection.networks.retinanet_network import RetinaNet
    from monai.apps.detection.utils.anchor_utils import AnchorGeneratorWithAnchorShape
    from monai.networks.blocks.backbone_fpn_utils import BackboneWithFPN, LastLevelMaxPool

    return RetinaNetDetector, RetinaNet, AnchorGeneratorWithAnchorShape, BackboneWithFPN, LastLevelMaxPool


def level_strides(returned_layers: Sequence[int], conv1_stride: int = 2) -> list[int]:
    """Strides (input pixels per feature pixel) of the FPN levels: one per returned layer plus the pooled level."""
    layers = [int(v) for v in returned_layers]
    if not layers or sorted(set(layers)) != layers or min(layers) < 1 or max(layers) > 4:
        raise ValueError(f"returned_layers={tuple(returned_layers)}: give increasing ResNet layers in 1..4, e.g. (1, 2, 3).")
    strides = [conv1_stride * 2 * 2 ** (l - 1) for l in layers]
    return strides + [2 * strides[-1]]


def build_retinanet(
    num_classes: int,
    backbone: str = "resnet18",
    returned_layers: Sequence[int] = (1, 2, 3),
    fpn_channels: int = 256,
    num_anchors: int = 3,
    width: int = 64,
    in_channels: int = 3,
    conv1_stride: int = 2,
):
    """A MONAI ``RetinaNet`` (2D) on a ResNet-FPN backbone trained from scratch.

    Args:
        num_classes: object classes, background excluded (3 for BCCD).
        backbone: one of :data:`BACKBONES`.
        returned_layers: the ResNet layers feeding the FPN (see the module docstring for strides and cost).
        fpn_channels: channels of the FPN and of the heads' convolutions (a multiple of 8: the heads use GroupNorm
            with 8 groups). MONAI's ``resnet_fpn_feature_extractor`` fixes 256.
        num_anchors: anchors per location (the anchor generator's ``len(base_anchor_shapes)``).
        width: channels of the first ResNet layer (64 for the standard ResNet; layers double it), smaller for tests.
        in_channels: image channels (3 for RGB).
        conv1_stride: stride of the first convolution.

    Returns:
        ``monai.apps.detection.networks.retinanet_network.RetinaNet`` with ``size_divisible`` set to the coarsest
        level's stride.
    """
    _, RetinaNet, _, BackboneWithFPN, LastLevelMaxPool = _detection_modules()
    if backbone not in BACKBONES:
        raise ValueError(f"Unknown backbone {backbone!r}; use one of {sorted(BACKBONES)}.")
    if fpn_channels < 8 or fpn_channels % 8:
        raise ValueError(f"fpn_channels={fpn_channels}: give a multiple of 8 (the heads' GroupNorm has 8 groups).")
    if width < 1:
        raise ValueError(f"width={width}: give a positive number of channels.")
    strides = level_strides(returned_layers, conv1_stride)
    block, layers = BACKBONES[backbone]
    inplanes = [width * 2**i for i in range(4)]
    body = resnet.ResNet(
        block=block,
        layers=layers,
        block_inplanes=inplanes,
        spatial_dims=2,
        n_input_channels=in_channels,
        conv1_t_size=7,
        conv1_t_stride=conv1_stride,
        feed_forward=False,
    )
    expansion = 4 if block == "bottleneck" else 1
    returned = [int(l) for l in returned_layers]
    feature_extractor = BackboneWithFPN(
        body,
        return_layers={f"layer{l}": str(i) for i, l in enumerate(returned)},
        in_channels_list=[inplanes[l - 1] * expansion for l in returned],
        out_channels=int(fpn_channels),
        spatial_dims=2,
        extra_blocks=LastLevelMaxPool(2),
    )
    return RetinaNet(
        spatial_dims=2,
        num_classes=int(num_classes),
        num_anchors=int(num_anchors),
        feature_extractor=feature_extractor,
        size_divisible=strides[-1],
    )


def build_detector(
    num_classes: int,
    network: torch.nn.Module | None = None,
    backbone: str = "resnet18",
    returned_layers: Sequence[int] = (1, 2, 3),
    fpn_channels: int = 256,
    width: int = 64,
    base_anchor_shapes: Sequence[Sequence[int]] = ((8, 8), (12, 12), (16, 16)),
    atss_candidates: int = 4,
    sampler: dict | None = None,
    score_thresh: float = 0.05,
    nms_thresh: float = 0.5,
    topk_candidates_per_level: int = 1000,
    detections_per_img: int = 100,
    conv1_stride: int = 2,
):
    """A configured ``RetinaNetDetector``: network, anchors, ATSS matcher, hard-negative sampler, box selector.

    Training components follow MONAI's lung_nodule_ct_detection bundle (ATSS matching with 4 candidates per level,
    ``center_in_gt=False``; hard-negative sampling of 64 anchors per image, 30 % positive, pool 20, at least 16
    negatives; BCE for classification, smooth L1 (beta 1/9) on encoded boxes for regression: MONAI's defaults).

    Args:
        num_classes: object classes, background excluded.
        network: an existing RetinaNet-like network; None builds one with :func:`build_retinanet`.
        backbone, returned_layers, fpn_channels, width, conv1_stride: see :func:`build_retinanet`.
        base_anchor_shapes: anchor (width, height) in input pixels at the finest level (scaled by the stride ratio
            on coarser levels). The defaults cover about 8 to 128 pixels with levels at strides 4..32.
        atss_candidates: ATSS candidates per level.
        sampler: ``set_hard_negative_sampler`` arguments; None uses the defaults above, ``{}`` disables sampling (every
            anchor counts in the classification loss).
        score_thresh, nms_thresh, topk_candidates_per_level, detections_per_img: the box selector (inference).

    Returns:
        ``monai.apps.detection.networks.retinanet_detector.RetinaNetDetector``; train ``detector.network``.
    """
    RetinaNetDetector, _, AnchorGeneratorWithAnchorShape, _, _ = _detection_modules()
    shapes = tuple(tuple(int(v) for v in s) for s in base_anchor_shapes)
    if not shapes or any(len(s) != 2 or min(s) < 1 for s in shapes):
        raise ValueError(f"base_anchor_shapes={base_anchor_shapes}: give (width, height) pairs of positive pixels.")
    strides = level_strides(returned_layers, conv1_stride)
    if network is None:
        network = build_retinanet(
            num_classes, backbone, returned_layers, fpn_channels, len(shapes), width, conv1_stride=conv1_stride
        )
    anchors = AnchorGeneratorWithAnchorShape(
        feature_map_scales=[s // strides[0] for s in strides], base_anchor_shapes=shapes
    )
    detector = RetinaNetDetector(network=network, anchor_generator=anchors)
    detector.set_atss_matcher(num_candidates=int(atss_candidates), center_in_gt=False)
    opts = {"batch_size_per_image": 64, "positive_fraction": 0.3, "pool_size": 20, "min_neg": 16}
    if sampler is None or sampler:
        opts.update(sampler or {})
        detector.set_hard_negative_sampler(**opts)
    detector.set_box_selector_parameters(
        score_thresh=score_thresh,
        topk_candidates_per_level=topk_candidates_per_level,
        nms_thresh=nms_thresh,
        detections_per_img=detections_per_img,
    )
    return detector
