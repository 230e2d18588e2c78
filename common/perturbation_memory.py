"""The perturbation memory: every training sample's last adversarial perturbation, the warm start of its next attack.

Margins change slowly from one epoch to the next (about 0.4 per epoch on the hippocampus slices), so the adversarial
perturbation a sample got in the last epoch is a good start for this epoch's attack (ATTA, Zheng et al., CVPR 2020:
adversarial examples transfer between epochs). With that start one or two PGD steps per batch reach about what five
steps from a random start reach, which is what makes a fast adversarial training (T = 1 or 2) work. The memory is a
property of the training attack, not of AMAT: VAT, TEAT and AMAT take it alike (``memory=`` of the iterations in
:mod:`robust_bundles.adversarial`).

What is stored, per sample id ``i`` (the same stable ids as :class:`robust_bundles.margins.MarginBook`):

- ``values[i]``: the perturbation ``x_adv - x`` divided by its largest absolute value, in float16 (default) or
  float32. Dividing by the maximum puts every element in [-1, 1], where float16 keeps a relative precision of 2^-11
  whatever the image size (a raw float16 perturbation of a 320 x 320 x 3 input at eps 5 has elements near 0.009 and
  loses precision to subnormals);
- ``scale[i]``: that largest absolute value (float32), so that ``values[i] * scale[i]`` is the perturbation;
- ``radius[i]``: the noise level the perturbation was made at (float32; the sample's AMAT margin, or VAT/TEAT's eps);
- ``geometry[i]``: the geometry key of the input it was made on (int64, see below).

Warm start (:meth:`PerturbationMemory.recall`): the stored perturbation *rescaled to the sample's current radius*,
``delta = values[i] * scale[i] * eps_now / radius[i]``: a perturbation at norm r of a ball of radius eps_then becomes
one at norm ``r * eps_now / eps_then`` of the ball of radius eps_now (the same relative position; on the sphere stays
on the sphere). Samples without a usable perturbation (never stored, stored at radius 0, other geometry, other input
shape) get a cold start (the attack's own random start).

Geometry: a perturbation is a pixel pattern of the input the network saw. When random crops, flips or other spatial
augmentation change that input between epochs, last epoch's pattern no longer lies on the same anatomy. The memory
then *resets* the sample (cold start, counted as a miss) instead of reusing a perturbation that does not fit: every
batch may carry a per-sample geometry key (an int64; :class:`GeometryKeyd` makes one from the random spatial
transforms MONAI records on the image), and a sample whose key differs from the stored one is not warm-started.
Storing in the un-augmented frame instead would need every augmentation to be invertible on the perturbation and
would leave the cropped-away border unknown; with reset the memory is simply useless (not wrong) under heavy random
cropping, and the per-batch hit fraction (``memory_hit_fraction`` in the training figures) says so. The bundles of
this project apply no augmentation (fixed pad/crop, fixed resize), so every visit after the first is a hit. A batch of
another input shape than the stored one resets the whole memory (a warning is logged).

Precision of float16 (measured, ``tests/test_perturbation_memory.py::test_float16_round_trip_error`` asserts < 3e-4):
the relative L2 error of a stored Gaussian perturbation is 2.1e-4 at the input sizes of all three bundles (1 x 40 x 56,
1 x 200 x 160, 3 x 320 x 320), four orders of magnitude below one attack step (``alpha * eps / T``, at least eps for
alpha 4 and T <= 4). Through one warm-started PGD step (T = 1, toy DynUNet, 16 samples, eps 3 -> 4) the float16 and
float32 memories gave per-sample losses at x_adv within 7.7e-4 of each other (x_adv itself moved by up to 3.6 % of its
norm on one sample: one step from a slightly different start follows a slightly different gradient). That is well
inside what the random start of the cold attack changes, so float16 is the default; ``storage_dtype="float32"`` is
there for whoever wants to check.

Memory: ``2 * C * H * W + 17`` bytes per sample in float16 (values, scale, radius, geometry, filled), the same in the
checkpoint. The hippocampus slices (1 x 40 x 56) take 4.5 KB per sample (23 MB for the about 5,200 training slices of
the full 70/10/20 split of the 208 labelled cases); the landmark inputs (1 x 200 x 160) 64 KB (9.6 MB for the 150
training images); the largest bundle, BCCD blood-cell detection, 154 KB at its default 3 x 160 x 160 input (31 MB for
the 205 training images) and 614 KB at the paper profile's 3 x 320 x 320 (126 MB).

The memory is training state: :meth:`state_dict` holds tensors and plain values only (``torch.load(weights_only=True)``)
and goes into the trainer's ``save_dict``; :meth:`load_state_dict` restores it bit for bit and refuses a checkpoint of
another split (sample count or ``key_digest``). Under data-parallel training the iterations gather every process's
perturbations with the first-visit rule of the margins (:func:`robust_bundles.distributed.gather_first_visits`) before
storing, so every process holds the same memory.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch

__all__ = ["STORAGE_DTYPES", "GeometryKeyd", "PerturbationMemory", "geometry_key"]

logger = logging.getLogger("robust_bundles.perturbation_memory")

STORAGE_DTYPES = {"float16": torch.float16, "float32": torch.float32}
_STATE_VERSION = 1


def _ids(ids: Any, n: int) -> torch.Tensor:
    t = ids if isinstance(ids, torch.Tensor) else torch.as_tensor(np.asarray(ids))
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise TypeError(f"Sample ids must be integers, got a tensor of dtype {t.dtype}.")
    t = t.detach().reshape(-1).cpu().long()
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= n):
        bad = int(t.min()) if int(t.min()) < 0 else int(t.max())
        raise IndexError(
            f"Sample id {bad} is out of range: the perturbation memory holds ids 0..{n - 1}. Its size (num_samples) "
            "must equal the number of training samples, and every sample needs a stable id in [0, N)."
        )
    return t


def _per_sample(value: Any, batch: int, name: str, dtype=torch.float32) -> torch.Tensor:
    t = torch.as_tensor(value).detach().cpu()
    t = (t.expand(batch) if t.ndim == 0 else t.reshape(-1)).to(dtype)
    if t.numel() != batch:
        raise ValueError(f"{name} needs one value per sample: got {t.numel()} for a batch of {batch}.")
    return t


class PerturbationMemory:
    """Each training sample's last adversarial perturbation, stored compactly and recalled as a warm start.

    Args:
        num_samples: N, the number of training samples (ids ``0 .. N-1``).
        storage_dtype: "float16" (default, see the module docstring for the measured error) or "float32".
        key_digest: optional digest of the ordered sample keys of the training set (as the margin book's); a
            checkpoint with another digest is refused.

    Attributes:
        values: (N, *shape) normalised perturbations (None before the first :meth:`store`).
        scale, radius: (N,) float32; geometry: (N,) int64; filled: (N,) bool.
        last_hit_fraction: the fraction of the last recalled batch that got a warm start.
    """

    def __init__(self, num_samples: int, storage_dtype: str = "float16", key_digest: str | None = None) -> None:
        if isinstance(num_samples, bool) or int(num_samples) != num_samples or num_samples < 1:
            raise ValueError(f"num_samples must be an integer >= 1 (the size of the training set), got "
                             f"{num_samples!r}.")
        if storage_dtype not in STORAGE_DTYPES:
            raise ValueError(f"storage_dtype must be one of {sorted(STORAGE_DTYPES)}; got {storage_dtype!r}.")
        if key_digest is not None and not isinstance(key_digest, str):
            raise TypeError(f"key_digest must be a string or None, got {type(key_digest).__name__}.")
        n = int(num_samples)
        self.num_samples = n
        self.storage_dtype = storage_dtype
        self.key_digest = key_digest
        self.values: torch.Tensor | None = None
        self.scale = torch.zeros(n, dtype=torch.float32)
        self.radius = torch.zeros(n, dtype=torch.float32)
        self.geometry = torch.zeros(n, dtype=torch.long)
        self.filled = torch.zeros(n, dtype=torch.bool)
        self.last_hit_fraction = 0.0

    def __len__(self) -> int:
        return self.num_samples

    def __repr__(self) -> str:
        shape = None if self.values is None else tuple(self.values.shape[1:])
        return (f"{type(self).__name__}(num_samples={self.num_samples}, storage_dtype={self.storage_dtype!r}, "
                f"shape={shape}, filled={int(self.filled.sum())})")

    @property
    def shape(self) -> tuple[int, ...] | None:
        """The per-sample input shape (C, *spatial) stored, None before the first :meth:`store`."""
        return None if self.values is None else tuple(self.values.shape[1:])

    def bytes_per_sample(self) -> int:
        """Bytes one sample takes in memory and in the checkpoint (values, scale, radius, geometry, filled)."""
        numel = int(np.prod(self.shape)) if self.shape is not None else 0
        return numel * STORAGE_DTYPES[self.storage_dtype].itemsize + 4 + 4 + 8 + 1

    # ------------------------------------------------------------------ use
    def recall(self, ids: Any, radius: Any, like: torch.Tensor,
               geometry: Any | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Warm starts of a batch, rescaled to the current radius.

        Args:
            ids: sample ids (B,).
            radius: the current noise level per sample (B,) or one float (AMAT margin, VAT/TEAT eps).
            like: the clean input batch (B, C, *spatial); the result has its shape, dtype and device.
            geometry: the batch's geometry keys (B,) int64, or None (the geometry never changes: key 0).

        Returns:
            ``(delta, hit)``: ``delta`` (B, C, *spatial) the stored perturbation times ``radius / radius_stored``
            (zero where there is no hit), ``hit`` (B,) bool on ``like``'s device: True where the sample has a
            perturbation of the same input shape and geometry, stored at a radius > 0.
        """
        t = _ids(ids, self.num_samples)
        b = like.shape[0]
        if t.numel() != b:
            raise ValueError(f"recall() got {t.numel()} ids for a batch of {b} inputs.")
        eps = _per_sample(radius, b, "radius")
        geo = torch.zeros(b, dtype=torch.long) if geometry is None else _per_sample(geometry, b, "geometry",
                                                                                   torch.long)
        if self.values is None or tuple(like.shape[1:]) != self.shape:
            hit = torch.zeros(b, dtype=torch.bool)
        else:
            hit = self.filled[t] & (self.radius[t] > 0) & (self.scale[t] > 0) & (self.geometry[t] == geo)
        self.last_hit_fraction = float(hit.float().mean()) if b else 0.0
        delta = torch.zeros_like(like)
        if bool(hit.any()):
            sel = t[hit]
            factor = self.scale[sel] * eps[hit] / self.radius[sel]
            stored = self.values[sel].float() * factor.reshape(-1, *([1] * (like.ndim - 1)))
            delta[hit.to(like.device)] = stored.to(like.device, like.dtype)
        return delta, hit.to(like.device)

    def store(self, ids: Any, delta: torch.Tensor, radius: Any, geometry: Any | None = None) -> None:
        """Remember the perturbations ``delta`` (B, C, *spatial) made at ``radius`` (B,) for samples ``ids``.

        An id repeated in the batch keeps its last entry. A batch of another input shape than the stored one resets
        the whole memory to the new shape (logged).
        """
        t = _ids(ids, self.num_samples)
        d = delta.detach().float().cpu()
        if d.ndim < 2 or d.shape[0] != t.numel():
            raise ValueError(f"store() needs one perturbation (C, *spatial) per id: got {t.numel()} ids and a "
                             f"tensor of shape {tuple(delta.shape)}.")
        b = t.numel()
        eps = _per_sample(radius, b, "radius")
        geo = torch.zeros(b, dtype=torch.long) if geometry is None else _per_sample(geometry, b, "geometry",
                                                                                   torch.long)
        if self.values is not None and tuple(d.shape[1:]) != self.shape:
            logger.warning(f"perturbation memory: input shape {tuple(d.shape[1:])} differs from the stored "
                           f"{self.shape}; every sample is reset (cold start).")
            self.values = None
            self.filled.zero_()
        if self.values is None:
            self.values = torch.zeros((self.num_samples, *d.shape[1:]), dtype=STORAGE_DTYPES[self.storage_dtype])
        amax = d.flatten(1).abs().amax(1)
        ok = torch.isfinite(amax) & (amax > 0)
        normed = d / torch.where(ok, amax, torch.ones_like(amax)).reshape(-1, *([1] * (d.ndim - 1)))
        normed = torch.where(ok.reshape(-1, *([1] * (d.ndim - 1))), normed, torch.zeros_like(normed))
        # assignment with repeated ids keeps the last one (index_put_ without accumulate, CPU, in order)
        self.values[t] = normed.to(self.values.dtype)
        self.scale[t] = torch.where(ok, amax, torch.zeros_like(amax))
        self.radius[t] = eps
        self.geometry[t] = geo
        self.filled[t] = True

    def reset(self) -> None:
        """Forget every perturbation (the next attacks start cold)."""
        self.values = None
        self.scale.zero_()
        self.radius.zero_()
        self.geometry.zero_()
        self.filled.zero_()

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        """Tensors and plain values only (loadable with ``torch.load(weights_only=True)``)."""
        return {
            "version": _STATE_VERSION,
            "num_samples": self.num_samples,
            "storage_dtype": self.storage_dtype,
            "key_digest": self.key_digest,
            "values": self.values.clone() if self.values is not None else torch.zeros(0),
            "scale": self.scale.clone(),
            "radius": self.radius.clone(),
            "geometry": self.geometry.clone(),
            "filled": self.filled.clone(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output bit for bit.

        Raises:
            KeyError: not a perturbation-memory state.
            ValueError: another number of samples, another key digest (both set), another storage dtype, or a newer
                state version.
        """
        if "filled" not in state or "values" not in state:
            raise KeyError(f"Not a PerturbationMemory state (keys: {sorted(state)}).")
        version = int(state.get("version", 1))
        if version > _STATE_VERSION:
            raise ValueError(f"The perturbation memory in the checkpoint has state version {version}, newer than this "
                             f"library's {_STATE_VERSION}: update robust_bundles to resume from it.")
        n = int(state["num_samples"])
        if n != self.num_samples:
            raise ValueError(f"The perturbation memory in the checkpoint has {n} samples but the training set has "
                             f"{self.num_samples}: resume with the same dataset/split.")
        digest = state.get("key_digest")
        if digest is not None and self.key_digest is not None and digest != self.key_digest:
            raise ValueError(f"The perturbation memory in the checkpoint was built on other sample keys (key digest "
                             f"{digest[:12]}... against {self.key_digest[:12]}... for the training set): resume with "
                             "the same dataset/split.")
        if state["storage_dtype"] != self.storage_dtype:
            raise ValueError(f"The perturbation memory in the checkpoint is stored in {state['storage_dtype']} but "
                             f"this run asks for {self.storage_dtype}: set memory_dtype to "
                             f"{state['storage_dtype']!r} to resume, or start a new run.")
        values = state["values"]
        self.values = values.detach().cpu().clone() if values.numel() else None
        self.scale = state["scale"].detach().cpu().float().clone()
        self.radius = state["radius"].detach().cpu().float().clone()
        self.geometry = state["geometry"].detach().cpu().long().clone()
        self.filled = state["filled"].detach().cpu().bool().clone()
        if self.key_digest is None:
            self.key_digest = digest


# ---------------------------------------------------------------------------------------------------- geometry
def _canonical(obj: Any) -> Any:
    """A plain, process-independent rendering of a recorded transform's parameters."""
    if isinstance(obj, torch.Tensor):
        return _canonical(obj.detach().cpu().tolist())
    if isinstance(obj, np.ndarray):
        return _canonical(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Mapping):
        # "id" is the transform object's address (differs between processes); "lazy" and "tracing" are flags
        return {str(k): _canonical(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))
                if k not in ("id", "lazy", "tracing")}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if isinstance(obj, float):
        return round(obj, 6)
    return obj if isinstance(obj, (int, str, bool, type(None))) else repr(obj)


def geometry_key(image: Any) -> int:
    """An int64 digest of the spatial transforms recorded on a MONAI ``MetaTensor`` (its ``applied_operations``:
    class, original size, crop box, flip flags, ...), 0 when none are recorded. Equal inputs geometry => equal key."""
    ops = getattr(image, "applied_operations", None) or []
    if not ops:
        return 0
    h = hashlib.sha256(repr(_canonical(list(ops))).encode("utf-8")).digest()
    return int.from_bytes(h[:8], "little", signed=True) or 1


class GeometryKeyd:
    """Put the geometry key of ``data[image_key]`` (:func:`geometry_key`) under ``data[key]`` (a dictionary transform;
    place it after the random spatial transforms of the training preprocessing).

    Args:
        image_key: the key of the (MetaTensor) network input.
        key: where the int64 key goes (the iterations read ``geometry_key`` by default).
    """

    def __init__(self, image_key: Hashable = "image", key: Hashable = "geometry_key") -> None:
        self.image_key, self.key = image_key, key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        if self.image_key not in data:
            raise KeyError(f"GeometryKeyd: the sample has no {self.image_key!r} (keys {list(data)}); give image_key.")
        out = dict(data)
        out[self.key] = torch.tensor(geometry_key(data[self.image_key]), dtype=torch.long)
        return out
