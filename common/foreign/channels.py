"""Which input channels ``audit`` and ``robustify`` attack: the image channels, not the guidance a bundle adds.

Interactive and label-guided model-zoo bundles give the network channels that are not image intensities: click
guidance maps (``spleen_deepedit_annotation``: DynUNet on 1 image channel + 2 guidance channels from
``AddGuidanceSignalDeepEditd(number_intensity_ch=1)``; ``pathology_nuclick_annotation``: RGB + 2 channels from
``AddPointGuidanceSignald``) or the label itself (``pathology_nuclei_classification``: RGB + the mask from
``AddLabelAsGuidanced``). An adversary perturbs the image, not the clicks or the label, so the attacks leave those
channels at their clean values (:class:`robust_bundles.attacks.ChannelAttack`).

:func:`detect_image_channels` finds the image channels where the preprocessing makes them certain:

- ``AddGuidanceSignalDeepEditd``, ``DiscardAddGuidanced`` (``monai.apps.deepedit``) and ``AddGuidanceSignald``
  (``monai.apps.deepgrow``) keep the first ``number_intensity_ch`` channels of the image and put the guidance after
  them: the image channels are ``0 .. number_intensity_ch - 1``;
- ``AddPointGuidanceSignald`` and ``AddLabelAsGuidanced`` (``monai.apps.nuclick``) append their channels to the image:
  the image channels are those the image has just before the first of them, counted by running the preprocessing up
  to it on the first data item (no item to run it on: not certain, every channel is attacked).

Anything else (no such transform, an unknown way of adding channels): every channel, as before.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Callable

from ..attacks import check_channels

__all__ = ["APPENDING", "SLICING", "detect_image_channels", "flat_transforms", "raw_first_item",
           "resolve_attack_channels"]

logger = logging.getLogger("robust_bundles.audit")

SLICING = (("monai.apps.deepedit.transforms", "AddGuidanceSignalDeepEditd"),
           ("monai.apps.deepedit.transforms", "DiscardAddGuidanced"),
           ("monai.apps.deepgrow.transforms", "AddGuidanceSignald"))
"""Transforms that keep the image's first ``number_intensity_ch`` channels and add guidance channels after them."""

APPENDING = (("monai.apps.nuclick.transforms", "AddPointGuidanceSignald"),
             ("monai.apps.nuclick.transforms", "AddLabelAsGuidanced"))
"""Transforms that append guidance (clicks, or the label as a mask) to the image's channels."""


def _classes(names: Sequence[tuple[str, str]]) -> tuple[type, ...]:
    import importlib

    out = []
    for module, name in names:
        try:
            out.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):  # pragma: no cover - an older MONAI without the app
            continue
    return tuple(out)


def flat_transforms(preprocessing: Any) -> list[Any]:
    """The transforms of a (nested) ``Compose`` or list in the order they run; a single transform as a list."""
    if preprocessing is None:
        return []
    if isinstance(preprocessing, (list, tuple)):
        return [t for p in preprocessing for t in flat_transforms(p)]
    inner = getattr(preprocessing, "transforms", None)
    if isinstance(inner, (list, tuple)):
        return [t for p in inner for t in flat_transforms(p)]
    return [preprocessing]


def raw_first_item(dataset: Any) -> Mapping | None:
    """The first item of a dataset's data before its transform (a MONAI ``Dataset`` over a list of dicts, under its
    ``Subset`` wrappers), or None when there is no such list."""
    from .audit import underlying

    base, _ = underlying(dataset)
    data = getattr(base, "data", None)
    if isinstance(data, Sequence) and not isinstance(data, (str, bytes)) and len(data) and isinstance(data[0], Mapping):
        return data[0]
    return None


def _channels_before(prefix: list[Any], item: Mapping, key: str) -> int | None:
    """The number of channels of ``item[key]`` after the transforms ``prefix`` (None when it cannot be read)."""
    from monai.transforms import Compose

    try:  # Compose maps the transforms after a random crop over its list of crops
        out = Compose(prefix)(copy.deepcopy(dict(item)))
        out = out[0] if isinstance(out, list) else out
        return int(out[key].shape[0])
    except Exception as e:  # noqa: BLE001 - any failure makes the count uncertain: fall back to every channel
        logger.info(f"attack channels: the preprocessing up to the guidance transform failed on the first item ({e})")
        return None


def detect_image_channels(preprocessing: Any, first_item: Mapping | Callable[[], Mapping | None] | None = None
                          ) -> tuple[list[int] | None, str]:
    """The image channels of the network input, where the preprocessing makes them certain (module docstring).

    Args:
        preprocessing: the evaluation (or training) preprocessing, a ``Compose``, a list or one transform.
        first_item: a data item before the preprocessing (counts the channels ahead of an appending transform), or a
            function returning one (called only then).

    Returns:
        ``(channels, why)``: the channel indices and the reason, or ``(None, why)`` for every channel.
    """
    transforms = flat_transforms(preprocessing)
    slicing, appending = _classes(SLICING), _classes(APPENDING)
    for i, t in enumerate(transforms):
        name = type(t).__name__
        if slicing and isinstance(t, slicing):
            n = int(getattr(t, "number_intensity_ch", 1))
            return list(range(n)), (f"the preprocessing's {name}(number_intensity_ch={n}) puts click guidance after "
                                    f"the first {n} image channel(s)")
        if appending and isinstance(t, appending):
            key = getattr(t, "image", None) or next(iter(getattr(t, "keys", ()) or ()), None)
            what = "the label as a mask" if name == "AddLabelAsGuidanced" else "click guidance"
            item = first_item() if callable(first_item) else first_item
            n = _channels_before(transforms[:i], item, key) if item is not None and key else None
            if n is None or n < 1:
                return None, (f"the preprocessing's {name} appends {what} to {key!r}, but its image channels could "
                              "not be counted on a data item: every channel is attacked (give --attack_channels)")
            return list(range(n)), (f"the preprocessing's {name} appends {what} to {key!r} after its {n} image "
                                    "channel(s)")
    return None, "no guidance transform in the preprocessing"


def resolve_attack_channels(given: Any, preprocessing: Any, first_item: Mapping | Callable[[], Mapping | None] | None,
                            flag: str = "--attack_channels") -> tuple[list[int] | None, str]:
    """The channels to attack: ``given`` (a list; ``"all"`` for every channel), else :func:`detect_image_channels`
    (logged in one line when it restricts the attack).

    Returns:
        ``(channels or None for every channel, why)``.
    """
    if isinstance(given, str) and given.strip().lower() == "all":
        return None, f"every channel ({flag} all)"
    if given is not None:
        if isinstance(given, str):
            import ast

            try:
                given = ast.literal_eval(given)
            except (ValueError, SyntaxError) as e:
                raise ValueError(f"{flag} {given!r}: give a list of channel indices such as \"[0]\" or \"[0, 1, 2]\", "
                                 "or all.") from e
        return check_channels(given, flag), f"given with {flag}"
    channels, why = detect_image_channels(preprocessing, first_item)
    if channels is not None:
        logger.info(f"attack channels {channels} only: {why} ({flag} overrides)")
    return channels, why
