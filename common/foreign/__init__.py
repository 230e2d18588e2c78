"""Foreign MONAI bundles (bundles this project did not write): the robustness audit and robust fine-tuning by overlay.

- :mod:`.losses`: any MONAI loss made per-sample (:class:`PerSampleWrapper`).
- :mod:`.parts`: finding the network, preprocessing, inferer, loss, metric and data of a bundle's own configs.
- :mod:`.audit`: ``robust_bundles audit``, the robustness report of a trained bundle.
- :mod:`.robustify`: ``robust_bundles robustify``, AMAT/VAT fine-tuning by an overlay on the bundle's train config.
"""

from .losses import PerSampleWrapper, per_sample

__all__ = ["PerSampleWrapper", "per_sample"]
