"""Attacks restricted to some input channels (guidance maps, label-derived masks held fixed): ChannelAttack, the
robustness handler's ``attack_channels`` and the audit's detection of guidance transforms."""

from __future__ import annotations

import math

import pytest
import torch
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedEvaluator
from torch import nn

from robust_bundles.apgd import APGD
from robust_bundles.attack_suite import RandomNoise
from robust_bundles.attacks import L2PGD, ChannelAttack, check_channels, on_channels
from robust_bundles.handlers import RobustnessEvaluationHandler
from robust_bundles.transfer import TransferAttack


class Recorder(nn.Module):
    """A 1x1 convolution of fixed weights that keeps every input it sees."""

    def __init__(self, channels: int = 2) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 1, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.arange(1.0, channels + 1).reshape(1, channels, 1, 1))
            self.conv.bias.zero_()
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return self.conv(x)


def mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((out - y) ** 2).flatten(1).mean(1)


def _data(n: int = 3, channels: int = 2) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    return [{"image": torch.rand(channels, 4, 4, generator=g), "label": torch.rand(1, 4, 4, generator=g)}
            for _ in range(n)]


def _evaluate(data, eps, eps_unit, channels):
    net = Recorder(data[0]["image"].shape[0])
    attacks = {"PGD": L2PGD(steps=3), "APGD": APGD(steps=3), "noise": RandomNoise()}
    h = RobustnessEvaluationHandler(mse, attacks, eps=[eps], metric_fn=lambda p, y: -mse(p, y), eps_unit=eps_unit,
                                    attack_channels=channels)
    SupervisedEvaluator(torch.device("cpu"), DataLoader(Dataset(data), batch_size=len(data)), net,
                        val_handlers=[h]).run()
    return h, net


@pytest.mark.parametrize("eps_unit, eps, l2", [("norm", 1.5, 1.5), ("rms", 0.5, 2.0)])
def test_only_the_attacked_channel_moves_and_eps_is_measured_on_it(eps_unit, eps, l2):
    # 2 x 4 x 4 inputs, channel 1 a guidance map: the attacks change channel 0 only; rms 0.5 is the L2 norm
    # 0.5 * sqrt(16 attacked values) = 2.0 (not 0.5 * sqrt(32) = 2.83 as over the whole input)
    data = _data()
    clean = torch.stack([d["image"] for d in data])
    h, net = _evaluate(data, eps, eps_unit, [0])
    assert len(net.seen) > 10
    for x in net.seen:
        assert torch.equal(x[:, 1], clean[:, 1])  # the guidance channel is never perturbed
    assert any((x[:, 0] - clean[:, 0]).abs().max() > 0.1 for x in net.seen)
    for r in h.rows:
        if r["attack"] != "clean":  # the ball's boundary: the loss grows outward along w = (1, 2)
            assert r["norm"] == pytest.approx(l2, rel=1e-5), r
    # the norm of what the network saw, read back from the inputs themselves (noise: its one forward pass)
    last = net.seen[-1]
    assert (last - clean).flatten(1).norm(dim=1).tolist() == pytest.approx([l2] * 3, rel=1e-5)
    assert h.attacked_values(clean) == 16 and h.settings()["attack_channels"] == [0]


def test_every_channel_is_todays_attack():
    # all channels given: the same numbers as without the flag (same seeds, same attacks); rms over all 32 values
    data = _data()
    a, _ = _evaluate(data, 0.5, "rms", None)
    b, _ = _evaluate(data, 0.5, "rms", [0, 1])
    assert a.summary == b.summary
    assert [r["norm"] for r in a.rows if r["attack"] == "noise"] == pytest.approx([0.5 * math.sqrt(32)] * 3)
    assert "attack_channels" not in a.settings()


def test_channel_attack_on_non_contiguous_channels_with_warm_start_and_transfer():
    x = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    y = torch.zeros(2, 1, 4, 4)
    net, surrogate = Recorder(3), Recorder(3)
    warm = (torch.ones_like(x), torch.tensor([True, False]))
    for attack in (L2PGD(steps=2), TransferAttack(L2PGD(steps=2), surrogate)):
        res = ChannelAttack(attack, [2, 0]).run(x, y, eps=1.0, model=net, loss_fn=mse, warm_start=warm)
        assert torch.equal(res.x_adv[:, 1], x[:, 1]) and res.x_adv.shape == x.shape
        assert (res.x_adv - x).flatten(1).norm(dim=1).tolist() == pytest.approx([1.0, 1.0], rel=1e-5)
        assert res.norms.tolist() == pytest.approx([1.0, 1.0], rel=1e-5)
    assert surrogate.seen and all(s.shape[1] == 3 and torch.equal(s[:, 1], x[:, 1]) for s in surrogate.seen)
    with pytest.raises(ValueError, match="below 3"):
        ChannelAttack(L2PGD(steps=1), [3]).run(x, y, eps=1.0, model=net, loss_fn=mse)
    assert on_channels(L2PGD(), None).__class__ is L2PGD and check_channels(1) == [1]
    for bad in ([], [0, 0], [-1], ["a"]):
        with pytest.raises(ValueError, match="attack_channels"):
            check_channels(bad)


# ------------------------------------------------------------------------------------------------ auto-detection
def _compose(*transforms: dict) -> object:
    from monai.bundle import ConfigParser

    parser = ConfigParser({"pre": {"_target_": "Compose", "transforms": list(transforms)}})
    return parser.get_parsed_content("pre")


def test_detects_the_image_channels_of_guidance_transforms(caplog):
    from robust_bundles.foreign.channels import detect_image_channels, resolve_attack_channels

    deepedit = _compose({"_target_": "ScaleIntensityd", "keys": "image"},
                        {"_target_": "monai.apps.deepedit.transforms.AddGuidanceSignalDeepEditd", "keys": "image",
                         "guidance": "guidance", "number_intensity_ch": 1})
    with caplog.at_level("INFO", logger="robust_bundles.audit"):
        channels, why = resolve_attack_channels(None, deepedit, None)
    assert channels == [0] and "AddGuidanceSignalDeepEditd(number_intensity_ch=1)" in why
    assert sum("attack channels [0] only" in r.getMessage() for r in caplog.records) == 1
    # the flag overrides the detection; 'all' attacks every channel
    assert resolve_attack_channels("[0, 2]", deepedit, None) == ([0, 2], "given with --attack_channels")
    assert resolve_attack_channels("all", deepedit, None)[0] is None
    # a label appended as a mask (nuclei classification): the image channels counted on the first item (RGB: 3)
    item = {"image": torch.rand(3, 8, 8), "label": (torch.rand(1, 8, 8) > 0.5).float()}
    label = _compose({"_target_": "ScaleIntensityd", "keys": "image"},
                     {"_target_": "monai.apps.nuclick.transforms.AddLabelAsGuidanced", "keys": "image",
                      "source": "label"})
    assert detect_image_channels(label, item)[0] == [0, 1, 2]
    assert detect_image_channels(label, lambda: item)[0] == [0, 1, 2]  # an item made when needed only:
    assert detect_image_channels(deepedit, lambda: 1 / 0)[0] == [0]  # not for number_intensity_ch
    assert detect_image_channels(label, None)[0] is None  # no item to count on: not certain, every channel
    points = _compose({"_target_": "monai.apps.nuclick.transforms.AddPointGuidanceSignald"})
    assert detect_image_channels(points, {**item, "others": torch.zeros(1, 8, 8)})[0] == [0, 1, 2]
    assert detect_image_channels(_compose({"_target_": "ScaleIntensityd", "keys": "image"}), item) == (
        None, "no guidance transform in the preprocessing")
    with pytest.raises(ValueError, match="--attack_channels"):
        resolve_attack_channels("[0, 0]", deepedit, None)


def test_the_foreign_overlay_restricts_the_training_attack():
    # robust.json: robust#channel_attack (what every method overlay's training attack maps to) is the PGD itself by
    # default, and a ChannelAttack on robust#attack_channels when robustify sets them
    import json

    from monai.bundle import ConfigParser

    from robust_bundles.foreign.overlay import FOREIGN_IDS
    from robust_bundles.foreign.robustify import OVERLAY_DIR

    assert FOREIGN_IDS["training_attack"] == "robust#channel_attack"
    config = json.loads((OVERLAY_DIR / "robust.json").read_text())
    plain = ConfigParser(config).get_parsed_content("robust#channel_attack")
    assert type(plain) is L2PGD and plain.steps == 10
    parser = ConfigParser(config)
    parser["robust#attack_channels"] = [0]
    restricted = parser.get_parsed_content("robust#channel_attack")
    assert isinstance(restricted, ChannelAttack) and restricted.channels == [0] and restricted.steps == 10


def test_channels_counted_through_random_crops():
    # the transforms ahead of the guidance run as a Compose: after a crop into a list of samples they map over it
    from robust_bundles.foreign.channels import detect_image_channels

    item = {"image": torch.rand(3, 8, 8), "label": torch.ones(1, 8, 8)}
    pre = _compose({"_target_": "RandSpatialCropSamplesd", "keys": ["image", "label"], "roi_size": [4, 4],
                    "num_samples": 2, "random_size": False},
                   {"_target_": "ScaleIntensityd", "keys": "image"},
                   {"_target_": "monai.apps.nuclick.transforms.AddLabelAsGuidanced", "keys": "image",
                    "source": "label"})
    assert detect_image_channels(pre, item) == (
        [0, 1, 2], "the preprocessing's AddLabelAsGuidanced appends the label as a mask to 'image' after its 3 image "
        "channel(s)")


def test_robustify_names_the_bundles_own_iteration_update_it_replaces(tmp_path):
    # an interactive bundle's trainer simulates clicks in its iteration_update (deepgrow/DeepEdit Interaction):
    # robustify's method iteration replaces it, and says so
    from foreign_data import write_bundle

    from robust_bundles.foreign.parts import load_parser
    from robust_bundles.foreign.robustify import replaced_iteration_update

    yaml = """\
network: {_target_: UNet, spatial_dims: 2, in_channels: 3, out_channels: 2, channels: [4, 8], strides: [2]}
loss: {_target_: DiceLoss, softmax: true}
optimizer: {_target_: torch.optim.Adam, params: $@network.parameters()}
clicks: {_target_: monai.apps.deepgrow.interaction.Interaction, transforms: [], max_interactions: 1, train: true}
trainer:
  _target_: SupervisedTrainer
  max_epochs: 1
  device: $torch.device('cpu')
  train_data_loader: {_target_: DataLoader, dataset: [], batch_size: 1}
  network: "@network"
  loss_function: "@loss"
  optimizer: "@optimizer"
  iteration_update: "@clicks"
"""
    parser = load_parser(write_bundle(tmp_path / "b", yaml), ["configs/train.yaml"])
    assert replaced_iteration_update(parser, "trainer") == "clicks"
    parser = load_parser(write_bundle(tmp_path / "c", yaml.replace('  iteration_update: "@clicks"\n', "")),
                         ["configs/train.yaml"])
    assert replaced_iteration_update(parser, "trainer") is None
