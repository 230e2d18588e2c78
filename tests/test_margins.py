"""Tests of robust_bundles.margins.MarginBook and robust_bundles.handlers.MarginHandler against hand-computed margin sequences."""

from __future__ import annotations

import glob
import logging
import os
import warnings

import pytest
import torch
import torch.nn as nn
from ignite.engine import Engine, Events

from robust_bundles.handlers import MarginHandler
from robust_bundles.margins import MarginBook, MarginSchedule, margin_schedule

T, F = True, False


def _record(book, ids, robust, norms, epoch=None):
    book.record(torch.tensor(ids), torch.tensor(robust), torch.tensor(norms, dtype=torch.float32), epoch=epoch)


def _margins(book):
    return book.margins.tolist()


# ---------------------------------------------------------------------------------------------------- construction
def test_defaults_and_validation():
    book = MarginBook(4, expansion_step=1.5)
    assert book.margins.dtype == torch.float32 and book.margins.shape == (4,)
    assert _margins(book) == [1.5, 1.5, 1.5, 1.5]  # A defaults to Delta
    assert _margins(MarginBook(2, 1.0, initial_margin=3.0)) == [3.0, 3.0]
    with pytest.raises(ValueError, match="num_samples"):
        MarginBook(0, 1.0)
    with pytest.raises(ValueError, match="expansion_step"):
        MarginBook(3, 0.0)
    with pytest.raises(ValueError, match="initial_margin"):
        MarginBook(3, 1.0, initial_margin=-1.0)
    with pytest.raises(ValueError, match="max_margin"):
        MarginBook(3, 1.0, initial_margin=2.0, max_margin=1.5)
    with pytest.raises(ValueError, match="update"):
        MarginBook(3, 1.0, update="batch")


def test_get_device_dtype_and_range():
    book = MarginBook(4, 1.0)
    book.margins = torch.tensor([1.0, 2.0, 3.0, 4.0])
    out = book.get(torch.tensor([3, 0, 3], dtype=torch.int32))
    assert out.dtype == torch.float32 and out.device.type == "cpu"
    assert out.tolist() == [4.0, 1.0, 4.0]
    assert book.get([1, 2]).tolist() == [2.0, 3.0]
    with pytest.raises(IndexError, match=r"0\.\.3.*number of training samples"):
        book.get(torch.tensor([1, 4]))
    with pytest.raises(IndexError, match="out of range"):
        book.get([-1])
    with pytest.raises(IndexError):
        _record(book, [5], [T], [1.0])
    with pytest.raises(ValueError, match="one robustness flag"):
        _record(book, [0, 1], [T], [1.0, 1.0])


# ---------------------------------------------------------------------------------------------------- the rule
def test_epoch_rule_hand_computed_sequence():
    # Delta = 1, A = 1, four samples; sample 3 is never visited.
    book = MarginBook(4, expansion_step=1.0)
    # epoch 1: 0 robust -> 1 + 1 = 2; 1 not robust, norm 0.5 -> max((1 + 0.5) / 2, 1) = 1 (floor at Delta);
    #          2 not robust, norm 0.9 -> max(0.95, 1) = 1
    _record(book, [0, 1, 2], [T, F, F], [1.0, 0.5, 0.9], epoch=1)
    assert _margins(book) == [1.0, 1.0, 1.0, 1.0]  # nothing changes before the end of the epoch
    stats = book.end_epoch()
    assert _margins(book) == [2.0, 1.0, 1.0, 1.0]
    assert stats["visited"] == 3 and stats["expanded"] == 1 and stats["expanded_fraction"] == pytest.approx(1 / 3)
    # epoch 2: 0 not robust at eps 2, norm 1.5 -> (2 + 1.5) / 2 = 1.75 (move toward the reached norm); 1, 2 robust -> 2
    _record(book, [0, 1, 2], [F, T, T], [1.5, 1.0, 1.0], epoch=2)
    book.end_epoch()
    assert _margins(book) == [1.75, 2.0, 2.0, 1.0]
    # epoch 3: 0 robust -> 2.75; 2 not robust, norm 1 -> (2 + 1) / 2 = 1.5; 1 and 3 unvisited -> unchanged
    _record(book, [0, 2], [T, F], [1.75, 1.0], epoch=3)
    stats = book.end_epoch()
    assert _margins(book) == [2.75, 2.0, 1.5, 1.0]
    assert stats["visited"] == 2 and stats["expanded_fraction"] == 0.5
    assert book.epochs_completed == 3 and book.last_expanded_fraction == 0.5
    # the pending state is reset: E_new == E, nothing visited
    assert torch.equal(book.margins_new, book.margins) and not book.visited.any() and book.all_robust.all()


def test_initial_margin_differs_from_step_and_floor():
    # A = 3, Delta = 1: not robust with norm 0 -> max((3 + 0) / 2, 1) = 1.5; then norm 0 again -> max(0.75, 1) = 1
    book = MarginBook(1, expansion_step=1.0, initial_margin=3.0)
    _record(book, [0], [F], [0.0])
    book.end_epoch()
    assert _margins(book) == [1.5]
    _record(book, [0], [F], [0.0])
    book.end_epoch()
    assert _margins(book) == [1.0]


def test_cap():
    # Delta = 1, A = 1, cap 2.5: robust every epoch -> 2, 2.5, 2.5
    book = MarginBook(2, expansion_step=1.0, max_margin=2.5)
    seq = []
    for _ in range(3):
        _record(book, [0], [T], [1.0])
        book.end_epoch()
        seq.append(_margins(book))
    assert seq == [[2.0, 1.0], [2.5, 1.0], [2.5, 1.0]]


def test_and_over_visits_and_running_average():
    # Delta = 0.5, A = 2. Sample 0: robust (norm 2) then not robust (norm 1) in one epoch -> not expanded,
    # E_new = (2 + 2) / 2 = 2 then (2 + 1) / 2 = 1.5 -> E = 1.5. Sample 1: robust twice -> expands once: 2.5.
    book = MarginBook(2, expansion_step=0.5, initial_margin=2.0)
    _record(book, [0, 1], [T, T], [2.0, 2.0], epoch=1)
    _record(book, [0, 1], [F, T], [1.0, 2.0], epoch=1)
    stats = book.end_epoch()
    assert _margins(book) == [1.5, 2.5]
    assert stats["expanded"] == 1 and stats["visited"] == 2


def test_running_average_two_visits_not_robust():
    # A = 4, Delta = 0.5, two non-robust visits with norms 2 then 1: E_new = (4 + 2) / 2 = 3, then (3 + 1) / 2 = 2.
    book = MarginBook(1, expansion_step=0.5, initial_margin=4.0)
    _record(book, [0], [F], [2.0])
    _record(book, [0], [F], [1.0])
    book.end_epoch()
    assert _margins(book) == [2.0]


def test_repeated_id_in_one_batch_counts_as_two_visits():
    book_a = MarginBook(2, expansion_step=0.5, initial_margin=4.0)
    _record(book_a, [0, 1, 0], [F, T, F], [2.0, 4.0, 1.0])
    book_a.end_epoch()
    assert _margins(book_a) == [2.0, 4.5]


def test_epoch_mode_versus_iteration_mode():
    # A = 2, Delta = 1; one sample, two batches per epoch: robust (norm 2), then not robust (norm 1).
    epoch_book = MarginBook(1, expansion_step=1.0, initial_margin=2.0, update="epoch")
    iter_book = MarginBook(1, expansion_step=1.0, initial_margin=2.0, update="iteration")
    trace = {"epoch": [], "iteration": []}
    for book, key in ((epoch_book, "epoch"), (iter_book, "iteration")):
        _record(book, [0], [T], [2.0], epoch=1)
        trace[key].append(_margins(book)[0])
        _record(book, [0], [F], [1.0], epoch=1)
        trace[key].append(_margins(book)[0])
        stats = book.end_epoch()
        trace[key].append(_margins(book)[0])
        assert stats["visited"] == 1 and stats["expanded"] == 0  # not robust on every visit, in both modes
    # epoch mode: unchanged during the epoch; E_new = (2 + 2) / 2 = 2, (2 + 1) / 2 = 1.5 -> 1.5 at the end
    assert trace["epoch"] == [2.0, 2.0, 1.5]
    # iteration mode: 2 + 1 = 3 at once; E_new restarts at 3: (3 + 1) / 2 = 2
    assert trace["iteration"] == [3.0, 2.0, 2.0]

    # robust on every visit: iteration mode expands once per visit, epoch mode once per epoch
    epoch_book = MarginBook(1, expansion_step=1.0, update="epoch")
    iter_book = MarginBook(1, expansion_step=1.0, update="iteration")
    for book in (epoch_book, iter_book):
        _record(book, [0], [T], [1.0])
        _record(book, [0], [T], [2.0])
        stats = book.end_epoch()
        assert stats["expanded_fraction"] == 1.0
    assert _margins(epoch_book) == [2.0] and _margins(iter_book) == [3.0]
    assert not iter_book.visited.any()


def test_missing_end_epoch_is_an_error():
    book = MarginBook(3, expansion_step=1.0)
    _record(book, [0], [T], [1.0], epoch=1)
    _record(book, [1], [T], [1.0], epoch=1)  # same epoch: fine
    with pytest.raises(RuntimeError, match=r"never ran.*robust_bundles\.handlers\.MarginHandler.*before the CheckpointSaver"):
        _record(book, [2], [T], [1.0], epoch=2)
    book.end_epoch()
    _record(book, [2], [T], [1.0], epoch=2)  # after the update: fine
    # iteration mode commits at once, so nothing is ever pending
    book = MarginBook(3, expansion_step=1.0, update="iteration")
    _record(book, [0], [T], [1.0], epoch=1)
    _record(book, [0], [T], [1.0], epoch=2)
    assert _margins(book) == [3.0, 1.0, 1.0]


# ---------------------------------------------------------------------------------------------------- reporting
def test_summary_and_histogram():
    book = MarginBook(5, expansion_step=1.0)
    book.margins = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    s = book.summary()
    assert s["mean"] == 3.0 and s["median"] == 3.0 and s["min"] == 1.0 and s["max"] == 5.0
    assert s["q05"] == pytest.approx(1.2) and s["q25"] == 2.0 and s["q75"] == 4.0 and s["q95"] == pytest.approx(4.8)
    assert s["std"] == pytest.approx(2**0.5)
    assert s["expanded_fraction"] == 0.0 and s["epochs_completed"] == 0
    counts, edges = book.histogram(bins=4, range=(1.0, 5.0))
    assert counts.tolist() == [1, 1, 1, 2] and edges.tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert MarginBook(1, 1.0).summary()["std"] == 0.0


def test_to_csv_with_keys(tmp_path):
    book = MarginBook(3, expansion_step=1.0)
    book.margins = torch.tensor([1.0, 2.5, 0.1])
    path = tmp_path / "deep" / "folder" / "margins.csv"
    book.to_csv(path, ids_to_keys=["case1/slice0", "case1,slice1", "case2/slice0"])
    assert path.read_text().splitlines() == [
        "sample_id,key,margin",
        "0,case1/slice0,1.0",
        '1,"case1,slice1",2.5',
        "2,case2/slice0,0.1",
    ]
    assert os.listdir(path.parent) == ["margins.csv"]
    with pytest.raises(ValueError, match="ids_to_keys has 2 keys"):
        book.to_csv(path, ids_to_keys=["a", "b"])


# ---------------------------------------------------------------------------------------------------- checkpoints
def _plain(obj):
    if isinstance(obj, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return all(_plain(v) for v in obj)
    return obj is None or isinstance(obj, (torch.Tensor, bool, int, float, str))


def test_state_dict_weights_only_round_trip(tmp_path):
    book = MarginBook(4, expansion_step=1.0, max_margin=10.0, key_digest=MarginBook.digest_keys(["a", "b", "c", "d"]))
    _record(book, [0, 1], [T, F], [1.0, 0.5], epoch=1)
    book.end_epoch()
    _record(book, [0, 2], [T, F], [2.0, 0.0], epoch=2)  # pending records, mid-epoch
    sd = book.state_dict()
    assert _plain(sd)
    torch.save(sd, tmp_path / "book.pt")
    loaded = torch.load(tmp_path / "book.pt", weights_only=True)

    book2 = MarginBook(4, expansion_step=1.0, max_margin=10.0)
    book2.load_state_dict(loaded)
    assert book2.key_digest == book.key_digest and book2.epochs_completed == 1 and book2.pending_epoch == 2
    for name in ("margins", "margins_new", "visited", "all_robust", "epoch_visited", "epoch_all_robust"):
        assert torch.equal(getattr(book2, name), getattr(book, name)), name
    # finishing the epoch gives the same margins as the original book
    assert book2.end_epoch() == book.end_epoch()
    assert _margins(book2) == _margins(book) == [3.0, 1.0, 1.0, 1.0]
    # the loaded tensors are copies: changing the book does not change the saved state
    assert sd["margins"].tolist() == [2.0, 1.0, 1.0, 1.0]


def test_load_state_dict_mismatch_errors():
    sd = MarginBook(4, 1.0, key_digest="abc").state_dict()
    msg = "has 4 samples but the training set has 5: resume with the same dataset/split"
    with pytest.raises(ValueError, match=msg):
        MarginBook(5, 1.0).load_state_dict(sd)
    with pytest.raises(ValueError, match="other sample keys"):
        MarginBook(4, 1.0, key_digest="xyz").load_state_dict(sd)
    with pytest.warns(UserWarning, match="expansion_step=2.0"):
        MarginBook(4, 2.0, initial_margin=1.0).load_state_dict(sd)


def test_version_1_state_loads_and_newer_version_is_refused():
    """A state written before the target mode (version 1: its config has no target keys) loads without a warning."""
    old = MarginBook(3, 1.0).state_dict()
    old["version"] = 1
    for key in ("target_margin", "epochs", "reach_fraction"):
        del old["config"][key]
    old["margins"] = torch.tensor([1.0, 4.0, 2.0])
    book = MarginBook(3, 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        book.load_state_dict(old)
    assert _margins(book) == [1.0, 4.0, 2.0]
    target = MarginBook(3, target_margin=6.0, epochs=4)  # another rule now: the difference is reported, margins kept
    with pytest.warns(UserWarning, match="expansion_step=3.0 \\(checkpoint 1.0\\)"):
        target.load_state_dict(old)
    assert _margins(target) == [1.0, 4.0, 2.0]
    future = dict(old, version=3)
    with pytest.raises(ValueError, match="state version 3, newer"):
        MarginBook(3, 1.0).load_state_dict(future)


# ------------------------------------------------------------------------------------------ schedule-aware margin
def test_margin_schedule_hand_computed():
    # M = 10, E = 6, rho = 0.5: reach epoch 3, Delta = A = 10 / 3, cap 10
    s = margin_schedule(10.0, 6, 0.5)
    assert s.expansion_step == pytest.approx(10 / 3) and s.initial_margin == pytest.approx(10 / 3)
    assert s.max_margin == 10.0 and s.reach_epoch == 3.0
    # the paper profile's length: E = 100 -> Delta = 10 / 50 = 0.2
    assert margin_schedule(10.0, 100, 0.5).expansion_step == pytest.approx(0.2)
    # rho = 1: reached in the last epoch; E = 5, rho = 0.5: reach epoch 2.5, Delta = 4
    assert margin_schedule(12.0, 8, 1.0).expansion_step == pytest.approx(1.5)
    assert margin_schedule(10.0, 5, 0.5).expansion_step == pytest.approx(4.0)
    # a given A = 2: A + (e* - 1) Delta = M -> Delta = (12 - 2) / (8 - 1) = 10 / 7
    s = margin_schedule(12.0, 8, 1.0, initial_margin=2.0)
    assert s == MarginSchedule(pytest.approx(10 / 7), 2.0, 12.0, 8.0)
    # one epoch (rho E < 1): the reach epoch is epoch 1, every sample starts at M
    s = margin_schedule(10.0, 1, 0.5)
    assert (s.expansion_step, s.initial_margin, s.max_margin, s.reach_epoch) == (10.0, 10.0, 10.0, 1.0)
    # an explicit cap replaces M
    assert margin_schedule(10.0, 6, 0.5, max_margin=15.0).max_margin == 15.0


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(target_margin=0.0, epochs=6), "target_margin"),
        (dict(target_margin=10.0, epochs=0), "epochs"),
        (dict(target_margin=10.0, epochs=6, reach_fraction=0.0), "reach_fraction"),
        (dict(target_margin=10.0, epochs=6, reach_fraction=1.5), "reach_fraction"),
        (dict(target_margin=10.0, epochs=6, initial_margin=10.0), "below target_margin"),
        (dict(target_margin=10.0, epochs=2, initial_margin=1.0), "no epoch to grow"),
    ],
)
def test_margin_schedule_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        margin_schedule(**kwargs)


def test_target_mode_book_hand_computed_trajectory():
    # M = 10, E = 6, rho = 0.5 -> Delta = A = 10/3, cap 10. Sample 0 robust every epoch: 20/3, 10, 10 (cap).
    # Sample 1 robust, then not robust with reached norm 20/3 (on its sphere): E_new = (20/3 + 20/3) / 2 -> stays 20/3,
    # then robust: 10. Sample 2 never robust, reached norm 2: max((10/3 + 2) / 2, Delta) = Delta = 10/3.
    book = MarginBook(3, target_margin=10.0, epochs=6)
    assert book.expansion_step == pytest.approx(10 / 3) and book.max_margin == 10.0
    third = 10 / 3
    outcomes = [([T, T, F], [third, third, 2.0]), ([T, F, F], [2 * third, 2 * third, 2.0]),
                ([T, T, F], [10.0, 20 / 3, 2.0])]
    seq = []
    for epoch, (robust, norms) in enumerate(outcomes, 1):
        _record(book, [0, 1, 2], robust, norms, epoch=epoch)
        book.end_epoch()
        seq.append(_margins(book))
    assert seq == [
        pytest.approx([2 * third, 2 * third, third]),
        pytest.approx([10.0, 2 * third, third]),
        pytest.approx([10.0, 10.0, third]),
    ]
    assert book.config() == {"initial_margin": pytest.approx(third), "expansion_step": pytest.approx(third),
                             "max_margin": 10.0, "update": "epoch", "target_margin": 10.0, "epochs": 6,
                             "reach_fraction": 0.5}
    assert "target_margin=10.0, epochs=6" in repr(book)


def test_fixed_or_target_not_both():
    with pytest.raises(ValueError, match="either expansion_step.*not both"):
        MarginBook(3, expansion_step=1.0, target_margin=10.0, epochs=6)
    with pytest.raises(ValueError, match="not neither"):
        MarginBook(3)
    with pytest.raises(ValueError, match="needs epochs"):
        MarginBook(3, target_margin=10.0)


def test_rule_argument_picks_one_of_both_values_hand_computed():
    # A bundle passes expansion_step AND target_margin with its margin_rule: the rule decides which one counts.
    # fixed: Delta = A = 1, no cap; one always-robust epoch -> 2. target: M = 10, E = 6, rho = 0.5 -> Delta = A = 10/3,
    # cap 10; one robust epoch -> 20/3. The same books as without the rule (the config, hence checkpoints, unchanged).
    both = dict(expansion_step=1.0, target_margin=10.0, epochs=6, reach_fraction=0.5)
    fixed, target = MarginBook(2, rule="fixed", **both), MarginBook(2, rule="target", **both)
    assert (fixed.rule, fixed.expansion_step, fixed.initial_margin, fixed.max_margin) == ("fixed", 1.0, 1.0, None)
    assert fixed.config() == MarginBook(2, expansion_step=1.0, epochs=6).config()
    assert target.rule == "target" and target.expansion_step == pytest.approx(10 / 3) and target.max_margin == 10.0
    assert target.config() == MarginBook(2, target_margin=10.0, epochs=6).config()
    for book, expected in ((fixed, [2.0, 1.0]), (target, [20 / 3, 10 / 3])):
        _record(book, [0, 1], [T, F], [book.expansion_step, 0.5], epoch=1)
        book.end_epoch()
        assert _margins(book) == pytest.approx(expected)
    assert MarginBook(2, expansion_step=1.0).rule == "fixed"  # no rule: from the value given
    with pytest.raises(ValueError, match="'fixed' margin rule needs expansion_step"):
        MarginBook(2, rule="fixed", target_margin=10.0, epochs=6)
    with pytest.raises(ValueError, match="'target' margin rule needs target_margin"):
        MarginBook(2, rule="target", expansion_step=1.0)
    with pytest.raises(ValueError, match="must be one of"):
        MarginBook(2, rule="fxed", expansion_step=1.0)


def test_target_mode_state_round_trip(tmp_path):
    book = MarginBook(2, target_margin=9.0, epochs=3, reach_fraction=1.0)  # Delta = A = 3
    _record(book, [0, 1], [T, F], [3.0, 3.0], epoch=1)
    book.end_epoch()
    torch.save(book.state_dict(), tmp_path / "b.pt")
    sd = torch.load(tmp_path / "b.pt", weights_only=True)
    assert sd["version"] == 2 and sd["config"]["target_margin"] == 9.0 and sd["config"]["epochs"] == 3
    again = MarginBook(2, target_margin=9.0, epochs=3, reach_fraction=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again.load_state_dict(sd)
    assert _margins(again) == [6.0, 3.0]


def _amat_like_engine(book, ids, robust, norms, net=None):
    """An Engine whose iteration records fixed outcomes into ``book`` (and takes an SGD step on ``net``)."""
    opt = torch.optim.SGD(net.parameters(), lr=0.1) if net is not None else None

    def step(engine, batch):
        if net is not None:
            opt.zero_grad()
            net(batch).pow(2).mean().backward()
            opt.step()
        _record(book, ids, robust, norms, epoch=engine.state.epoch)
        return 0.0

    return Engine(step)


def test_monai_checkpoint_round_trip(tmp_path):
    from monai.handlers import CheckpointLoader, CheckpointSaver

    torch.manual_seed(0)
    net = nn.Linear(3, 2)
    book = MarginBook(4, expansion_step=1.0)
    trainer = _amat_like_engine(book, [0, 1, 2], [T, F, T], [1.0, 0.5, 1.0], net=net)
    MarginHandler(book).attach(trainer)  # before the saver
    CheckpointSaver(
        save_dir=str(tmp_path),
        save_dict={"net": net, "margins": book},
        save_final=True,
        save_interval=1,
        epoch_level=True,
    ).attach(trainer)
    trainer.run([torch.ones(1, 3)], max_epochs=2)
    assert _margins(book) == [3.0, 1.0, 3.0, 1.0]

    # the epoch-1 checkpoint holds the margins after the epoch-1 update
    (epoch1,) = glob.glob(str(tmp_path / "*epoch=1.pt"))
    book1 = MarginBook(4, expansion_step=1.0)
    CheckpointLoader(load_path=epoch1, load_dict={"margins": book1})(Engine(lambda e, b: None))
    assert _margins(book1) == [2.0, 1.0, 2.0, 1.0] and not book1.visited.any()

    (final,) = glob.glob(str(tmp_path / "*final_iteration=*.pt"))
    book2 = MarginBook(4, expansion_step=1.0)
    net2 = nn.Linear(3, 2)
    fresh = Engine(lambda e, b: None)
    CheckpointLoader(load_path=final, load_dict={"net": net2, "margins": book2}).attach(fresh)
    fresh.fire_event(Events.STARTED)  # what engine.run does first
    assert torch.equal(book2.margins, book.margins) and book2.epochs_completed == 2
    assert torch.equal(net2.weight, net.weight)

    with pytest.raises(ValueError, match="has 4 samples but the training set has 6"):
        CheckpointLoader(load_path=final, load_dict={"margins": MarginBook(6, 1.0)})(Engine(lambda e, b: None))


# ---------------------------------------------------------------------------------------------------- handler
class _FakeWriter:
    def __init__(self):
        self.scalars, self.histograms = [], []

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))

    def add_histogram(self, tag, values, step):
        self.histograms.append((tag, values.clone(), step))


def test_margin_handler_two_epochs(tmp_path, caplog):
    # Delta = 1, A = 1; every epoch: 0 robust, 1 not robust (norm 0.5), 2 robust; 3 never visited.
    # epoch 1: [2, max(0.75, 1) = 1, 2, 1]; epoch 2: [3, 1, 3, 1]
    book = MarginBook(4, expansion_step=1.0)
    trainer = _amat_like_engine(book, [0, 1, 2], [T, F, T], [1.0, 0.5, 1.0])
    writer = _FakeWriter()
    csv_path = tmp_path / "out" / "margins.csv"
    handler = MarginHandler(book, csv_path=str(csv_path), summary_writer=writer)
    handler.attach(trainer)
    handler.attach(trainer)  # no double registration
    with caplog.at_level(logging.INFO, logger="robust_bundles.margins"):
        trainer.run([0], max_epochs=2)

    assert _margins(book) == [3.0, 1.0, 3.0, 1.0] and book.epochs_completed == 2
    m = trainer.state.metrics
    assert m["margin_mean"] == 2.0 and m["margin_median"] == 2.0 and m["margin_max"] == 3.0
    assert m["margin_q05"] == 1.0 and m["margin_q95"] == 3.0
    assert m["margin_expanded_fraction"] == pytest.approx(2 / 3)

    assert csv_path.read_text().splitlines() == ["sample_id,margin", "0,3.0", "1,1.0", "2,3.0", "3,1.0"]
    assert os.listdir(csv_path.parent) == ["margins.csv"]  # written via a temp file, none left behind

    lines = [r.getMessage() for r in caplog.records if r.name == "robust_bundles.margins"]
    assert lines == [
        "Epoch 1: margins mean 1.5 median 1.5 q05 1 q95 2 max 2, expanded 66.7% of 3 visited",
        "Epoch 2: margins mean 2 median 2 q05 1 q95 3 max 3, expanded 66.7% of 3 visited",
    ]
    assert ("margin/mean", 2.0, 2) in writer.scalars and ("margin/mean", 1.5, 1) in writer.scalars
    assert {t for t, _, _ in writer.scalars} == {f"margin/{k}" for k in ("mean", "median", "q05", "q95", "max",
                                                                          "expanded_fraction")}
    assert [(t, s) for t, _, s in writer.histograms] == [("margin/histogram", 1), ("margin/histogram", 2)]
    assert writer.histograms[1][1].tolist() == [3.0, 1.0, 3.0, 1.0]


def test_margin_handler_without_quantiles_and_order_warning(tmp_path):
    from monai.handlers import CheckpointSaver

    book = MarginBook(2, expansion_step=1.0)
    trainer = _amat_like_engine(book, [0], [T], [1.0])
    CheckpointSaver(save_dir=str(tmp_path), save_dict={"margins": book}, save_interval=1).attach(trainer)
    with pytest.warns(UserWarning, match="before CheckpointSaver"):
        MarginHandler(book, log_quantiles=False, tag_prefix="eps").attach(trainer)
    trainer.run([0], max_epochs=1)
    assert {k for k in trainer.state.metrics} == {"eps_mean", "eps_max", "eps_expanded_fraction"}
    with pytest.raises(TypeError, match="MarginBook"):
        MarginHandler(object())
