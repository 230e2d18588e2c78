"""Networks shared by the bundles.

:func:`nnunet_dynunet` builds MONAI's ``DynUNet`` configured the nnU-Net way from the patch size alone (kernel sizes and
strides as nnU-Net's planner derives them, instance norm, leaky ReLU), so that every segmentation bundle states its
network in a few config lines (patch size, channels, filters) instead of copying kernel and stride lists.
"""

from __future__ import annotations

from typing import Sequence

from monai.networks.nets import DynUNet

__all__ = ["nnunet_plan", "nnunet_dynunet"]


def nnunet_plan(patch_size: Sequence[int], min_feature_size: int = 4, max_pools: int = 6) -> tuple[list, list]:
    """Kernel sizes and strides of a U-Net for ``patch_size``, as nnU-Net's planner derives them.

    Every axis is halved (stride 2) while its feature map stays at least ``2 * min_feature_size`` voxels and fewer
    than ``max_pools`` poolings were made on it; all kernels are 3 (2D bundles here are isotropic in-plane).
    Example: (40, 56) -> strides [1,1], [2,2], [2,2], [2,2] (feature maps 40x56, 20x28, 10x14, 5x7).

    Args:
        patch_size: the network input size per spatial axis, in voxels.
        min_feature_size: the smallest feature map size an axis may be pooled to.
        max_pools: the largest number of poolings per axis.

    Returns:
        ``(kernel_size, strides)``: one list per level (the first level has stride 1).
    """
    size = [int(s) for s in patch_size]
    if not size or min(size) < 1:
        raise ValueError(f"patch_size={list(patch_size)}: give a positive size per spatial axis.")
    strides = [[1] * len(size)]
    pools = [0] * len(size)
    while True:
        step = [2 if s >= 2 * min_feature_size and p < max_pools else 1 for s, p in zip(size, pools)]
        if all(st == 1 for st in step):
            break
        strides.append(step)
        size = [s // st for s, st in zip(size, step)]
        pools = [p + (st == 2) for p, st in zip(pools, step)]
    kernels = [[3] * len(size) for _ in strides]
    return kernels, strides


def nnunet_dynunet(
    patch_size: Sequence[int],
    in_channels: int,
    out_channels: int,
    filters: Sequence[int] | None = None,
    deep_supervision: bool = True,
    deep_supr_num: int = 2,
    min_feature_size: int = 4,
    max_pools: int = 6,
) -> DynUNet:
    """A ``DynUNet`` for ``patch_size`` configured the nnU-Net way.

    Args:
        patch_size: the network input size (2 or 3 spatial axes), in voxels; gives the depth, kernels and strides
            (:func:`nnunet_plan`).
        in_channels: input channels (MRI modalities).
        out_channels: output channels (classes, background included).
        filters: feature channels per level; default nnU-Net's 32, 64, 128, ... capped at 512 (2D) or 320 (3D). Its
            length must equal the number of levels of the plan.
        deep_supervision: also return the outputs of the ``deep_supr_num`` levels below the top in training mode
            (DynUNet stacks them; eval mode returns the full-resolution output only).
        deep_supr_num: number of deep-supervision heads.
        min_feature_size: see :func:`nnunet_plan`.
        max_pools: see :func:`nnunet_plan`.
    """
    kernels, strides = nnunet_plan(patch_size, min_feature_size, max_pools)
    levels = len(strides)
    if filters is None:
        cap = 512 if len(kernels[0]) == 2 else 320
        filters = [min(32 * 2**i, cap) for i in range(levels)]
    filters = [int(f) for f in filters]
    if len(filters) != levels:
        raise ValueError(
            f"filters={filters} has {len(filters)} levels but the patch size {list(patch_size)} gives {levels} "
            f"(strides {strides}): give {levels} filter counts, e.g. {[min(32 * 2**i, 512) for i in range(levels)]}."
        )
    return DynUNet(
        spatial_dims=len(kernels[0]),
        in_channels=int(in_channels),
        out_channels=int(out_channels),
        kernel_size=kernels,
        strides=strides,
        upsample_kernel_size=strides[1:],
        filters=filters,
        norm_name="instance",
        act_name=("leakyrelu", {"inplace": True, "negative_slope": 0.01}),
        deep_supervision=deep_supervision,
        deep_supr_num=deep_supr_num,
        res_block=False,
    )
