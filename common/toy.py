"""A small generated 2D segmentation problem, for the demo and the end-to-end tests (no download).

Each sample is a (1, size, size) image: a smooth random background plus Gaussian noise, a bright ellipse (class 1) and
a dark ellipse (class 2) whose contrasts vary from sample to sample, z-scored per image like the MRI bundles. Labels
are (1, size, size) class indices. Every sample carries a stable ``sample_id`` (0..N-1).
"""

from __future__ import annotations

import numpy as np

__all__ = ["make_toy_segmentation", "toy_network", "run_toy", "toy_thresholds", "toy_robustness"]


def _ellipse(size: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cy, cx = rng.uniform(0.25 * size, 0.75 * size, 2)
    ry, rx = rng.uniform(0.1 * size, 0.22 * size, 2)
    t = rng.uniform(0, np.pi)
    dy, dx = yy - cy, xx - cx
    u = dx * np.cos(t) + dy * np.sin(t)
    v = -dx * np.sin(t) + dy * np.cos(t)
    return (u / rx) ** 2 + (v / ry) ** 2 <= 1.0


def make_toy_segmentation(num_samples: int, size: int = 32, seed: int = 0, noise: float = 0.35) -> list[dict]:
    """Generate ``num_samples`` samples as a list of dicts {"image", "label", "sample_id"}.

    Args:
        num_samples: N.
        size: image side length in pixels.
        seed: random seed (the same seed gives the same data).
        noise: standard deviation of the additive Gaussian noise, relative to the unit contrast of class 1.

    Returns:
        A list of N dicts with "image" float32 (1, size, size) z-scored, "label" int64 (1, size, size) in {0, 1, 2}
        and "sample_id" int.
    """
    if num_samples < 1 or size < 8:
        raise ValueError("num_samples must be >= 1 and size >= 8.")
    rng = np.random.default_rng(seed)
    out = []
    for i in range(num_samples):
        label = np.zeros((size, size), np.int64)
        a = _ellipse(size, rng)
        b = _ellipse(size, rng) & ~a
        label[a] = 1
        label[b] = 2
        low = rng.normal(0, 1, (4, 4))
        bg = np.kron(low, np.ones((size // 4 + 1, size // 4 + 1)))[:size, :size] * 0.3
        img = bg + rng.normal(0, noise, (size, size))
        img[a] += rng.uniform(0.8, 1.4)
        img[b] -= rng.uniform(0.8, 1.4)
        img = (img - img.mean()) / max(img.std(), 1e-8)
        out.append({"image": img[None].astype(np.float32), "label": label[None], "sample_id": i})
    return out


def toy_network(num_classes: int = 3, filters: tuple[int, ...] = (8, 16, 32)):
    """A small 2D DynUNet (instance norm, leaky ReLU, as nnU-Net) for the toy problem."""
    from monai.networks.nets import DynUNet

    n = len(filters)
    return DynUNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=num_classes,
        kernel_size=[3] * n,
        strides=[1] + [2] * (n - 1),
        upsample_kernel_size=[2] * (n - 1),
        filters=list(filters),
        norm_name="instance",
        res_block=False,
    )


def run_toy(
    method: str | None = None,
    train_data: list[dict] | None = None,
    epochs: int = 10,
    batch_size: int = 16,
    lr: float = 0.01,
    thresholds=None,
    eps: float = 2.0,
    expansion_step: float = 0.5,
    attack_steps: int = 5,
    seed: int = 0,
    network=None,
    init_from: str | None = None,
    target_margin: float | None = None,
    reach_fraction: float = 0.5,
    memory: bool = False,
    extra_handlers: list | None = None,
    **settings,
):
    """Train a toy network with any registered method (STD, VAT(eps), AMAT, ...) using the project's real components.

    A plain ``monai.engines.SupervisedTrainer``; a method only sets its ``iteration_update`` (and AMAT adds the
    margin book and its handler), exactly what a bundle overlay does (:meth:`robust_bundles.methods.Method.training`).

    Args:
        method: a registered method's name, any case (default: the reference, STD).
        init_from: a saved state dict or checkpoint to start from (robust fine-tuning, through
            :class:`robust_bundles.handlers.InitFromCheckpoint`); None trains from the network's initialisation.
        target_margin: AMAT's schedule-aware margin: Delta, A and the cap from this target margin, ``epochs`` and
            ``reach_fraction`` (:func:`robust_bundles.margins.margin_schedule`) instead of ``expansion_step``.
        memory: warm-start every attack from the sample's last perturbation
            (:class:`robust_bundles.perturbation_memory.PerturbationMemory`), every adversarial method alike.
        extra_handlers: further train handlers (e.g. a :class:`robust_bundles.handlers.PassCounter`).
        settings: further settings of the method's builder (e.g. ``beta``; default: the builder's, AMAT's 0.5).
        The others: the method, data and training settings (Delta = ``expansion_step``, VAT's ``eps``, the training
        PGD's ``attack_steps``).

    Returns:
        (network, margins or None)
    """
    import torch
    from monai.data import DataLoader, Dataset
    from monai.utils import set_determinism

    from . import methods
    from .attacks import L2PGD
    from .handlers import InitFromCheckpoint
    from .tasks.segmentation import DiceCELoss

    set_determinism(seed)
    data = train_data if train_data is not None else make_toy_segmentation(128, seed=seed)
    net = network if network is not None else toy_network()
    loss = DiceCELoss()
    loader = DataLoader(Dataset(data), batch_size=batch_size, shuffle=True, num_workers=0)
    opt = torch.optim.Adam(net.parameters(), lr)
    handlers = list(extra_handlers or [])
    if init_from is not None:
        handlers.append(InitFromCheckpoint(init_from, net))
    try:
        entry = methods.reference() if method is None else methods.get(method)
    except KeyError as e:
        raise ValueError(str(e.args[0])) from None
    rule = "target" if target_margin is not None else "fixed"
    training = entry.training(  # each method's builder takes what it reads and ignores the rest
        len(data), attack=L2PGD(steps=attack_steps, alpha=4.0), eps=eps, thresholds=thresholds, margin_rule=rule,
        expansion_step=expansion_step, target_margin=target_margin, epochs=epochs, reach_fraction=reach_fraction,
        memory=memory, max_epochs=epochs, **settings)
    training.trainer(net, opt, loss, loader, epochs, handlers=handlers).run()
    return net, training.margins


def toy_thresholds(network, data: list[dict], rule: str = "mean", **params):
    """Estimate xi on the training data with the eval-mode network (the ThresholdEstimationHandler)."""
    import os
    import tempfile

    import torch
    from monai.data import DataLoader, Dataset
    from monai.engines import SupervisedEvaluator

    from .handlers import ThresholdEstimationHandler
    from .tasks.segmentation import DiceCELoss

    with tempfile.TemporaryDirectory() as tmp:
        h = ThresholdEstimationHandler(DiceCELoss(), os.path.join(tmp, "xi.json"), rule=rule, **params)
        ev = SupervisedEvaluator(
            device=torch.device("cpu"),
            val_data_loader=DataLoader(Dataset(data), batch_size=32),
            network=network,
            val_handlers=[h],
        )
        ev.run()
        return h.thresholds


def toy_robustness(network, data: list[dict], eps=(1.0, 3.0), pgd_steps: int = 20, ifgsm_steps: int = 10):
    """Clean and attacked slice Dice (RobustnessEvaluationHandler); returns its summary dict."""
    import torch
    from monai.data import DataLoader, Dataset
    from monai.engines import SupervisedEvaluator

    from .attacks import L2IFGSM, L2PGD
    from .handlers import RobustnessEvaluationHandler
    from .tasks.segmentation import DiceCELoss, SliceDice

    h = RobustnessEvaluationHandler(
        DiceCELoss(), {"PGD": L2PGD(steps=pgd_steps), "IFGSM": L2IFGSM(steps=ifgsm_steps)}, eps=list(eps),
        metric=SliceDice(name="dice"), id_keys=("sample_id", "case", "slice"),
    )
    ev = SupervisedEvaluator(
        device=torch.device("cpu"), val_data_loader=DataLoader(Dataset(data), batch_size=32), network=network,
        val_handlers=[h],
    )
    ev.run()
    return h.summary
