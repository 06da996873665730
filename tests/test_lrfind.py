"""LR range test: exponential sweep, sensible suggestion, divergence stop, and no trace left
behind."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from cifarkit.analysis.lrplot import describe, plot_lr_find
from cifarkit.base import ConfigError
from cifarkit.config import TrainConfig
from cifarkit.data.dataset import Cifar10
from cifarkit.data.loader import DeviceLoader
from cifarkit.optim import make_optimizer
from cifarkit.training.lrfind import LRFindResult, lr_find, lr_range_test, suggest


def small_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 10),
    )


def loader_of(data: Cifar10, batch_size: int = 64) -> DeviceLoader:
    return DeviceLoader(data.train_images, data.train_labels, batch_size, train=True, seed=0)


def snapshot(model: nn.Module, opt: torch.optim.Optimizer):
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    st = opt.state_dict()
    state = {i: {k: v.clone() for k, v in s.items()} for i, s in st["state"].items()}
    return sd, state, [dict(g) for g in st["param_groups"]]


def test_state_of_model_optimizer_and_loader_is_untouched(learnable_data):
    torch.manual_seed(0)
    model = small_net()
    cfg = TrainConfig(lr=0.1, progress=False)
    opt = make_optimizer(model, cfg)
    loader = loader_of(learnable_data)
    for x, y in loader:  # one real step first: momentum buffers and BatchNorm statistics exist
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        break
    model.eval()
    before = snapshot(model, opt)
    grads = [p.grad for p in model.parameters()]
    rng = torch.get_rng_state()
    # 4 batches: cycles twice
    result = lr_range_test(model, loader, opt, num_iter=9, label_smoothing=0.2)
    after = snapshot(model, opt)
    assert all(torch.equal(before[0][k], after[0][k]) for k in before[0])
    assert before[1].keys() == after[1].keys()
    assert all(
        torch.equal(before[1][i][k], after[1][i][k]) for i in before[1] for k in before[1][i]
    )
    assert before[2] == after[2]  # learning rates (0.1) and every other group setting
    assert not model.training and [p.grad for p in model.parameters()] == grads
    assert loader.epoch == 0 and torch.equal(torch.get_rng_state(), rng)
    assert len(result.lrs) == len(result.losses) == len(result.raw_losses) == 9
    assert result.lrs[0] == pytest.approx(1e-5) and result.lrs[-1] == pytest.approx(10.0)
    ratios = [b / a for a, b in zip(result.lrs, result.lrs[1:])]
    assert ratios == pytest.approx([ratios[0]] * 8)  # exponential steps
    assert 1e-5 <= result.steepest_lr <= result.suggestion == result.min_loss_lr <= 10


def test_parameter_groups_keep_their_lr_ratio(learnable_data):
    torch.manual_seed(0)
    model = small_net()
    opt = make_optimizer(model, TrainConfig(bias_lr_scale=64.0))
    seen = []
    step = opt.step
    opt.step = lambda *a, **k: (seen.append([g["lr"] for g in opt.param_groups]), step(*a, **k))[1]
    lr_range_test(model, loader_of(learnable_data), opt, num_iter=5, start_lr=1e-3, end_lr=1.0)
    assert len(seen) == 5 and seen[0][0] == pytest.approx(1e-3)
    # the BatchNorm group, always 64x
    assert all(lrs[-1] == pytest.approx(64 * lrs[0]) for lrs in seen)


def test_stops_when_the_loss_diverges(learnable_data):
    torch.manual_seed(0)
    result = lr_range_test(
        small_net(),
        loader_of(learnable_data),
        lambda m: torch.optim.SGD(m.parameters(), lr=1),
        start_lr=1.0,
        end_lr=1e6,
        num_iter=50,
        smooth=0.5,
    )
    assert result.diverged and len(result.lrs) < 50
    assert all(math.isfinite(v) for v in result.losses + result.raw_losses)


def test_suggestion_rules_on_a_known_curve():
    lrs = [10 ** (-4 + 5 * i / 99) for i in range(100)]
    # loss falls fastest at 1e-2 (a logistic step in log10 LR), bottoms out at LR 1, then rises
    losses = [
        2 - 1 / (1 + math.exp(-3 * (math.log10(lr) + 2))) + 0.5 * max(0.0, math.log10(lr)) ** 2
        for lr in lrs
    ]
    steepest, at_min = suggest(lrs, losses)
    assert steepest == pytest.approx(1e-2, rel=0.15)
    assert at_min == pytest.approx(1.0, rel=0.15)
    assert suggest(lrs[:5], [1, 2, 3, 4, 5]) == (lrs[0], lrs[0])  # never fell: the smallest LR


class NetWithInit(nn.Module):
    """A small network that, like CompactNet, wants to see the training images before training."""

    seen: list = []

    def __init__(self):
        super().__init__()
        self.net = small_net()

    def init_from_data(self, images):
        NetWithInit.seen.append(tuple(images.shape))

    def forward(self, x):
        return self.net(x)


def test_lr_find_on_a_config(learnable_data, tmp_path):
    NetWithInit.seen = []
    cfg = TrainConfig(
        batch_size=64,
        device="cpu",
        precision="bf16",
        progress=False,
        lr=0.4,
        out=str(tmp_path / "run"),
    )
    result = lr_find(
        cfg,
        learnable_data,
        model=NetWithInit,
        num_iter=6,
        start_lr=1e-4,
        end_lr=1.0,
        path=tmp_path / "lr.png",
    )
    assert NetWithInit.seen == [(200, 3, 32, 32)]  # normalised training images, as fit gives them
    assert isinstance(result, LRFindResult) and len(result.lrs) == len(result.losses) == 6
    assert 1e-4 <= result.suggestion <= 1.0 and result.recipe_lr == 0.4
    assert (tmp_path / "lr.png").stat().st_size > 0
    text = describe(result)
    assert (
        text.startswith("suggested peak LR ")
        and "the recipe uses 0.4 (" in text
        and "x the suggestion)" in text
    )
    assert len(text.splitlines()) == 2
    fig = plot_lr_find(result, recipe_lr=0.4, path=tmp_path / "again.png")
    assert fig.axes[0].get_xscale() == "log" and (tmp_path / "again.png").exists()
    assert str(result) == text  # print(result) in the notebook
    fig = result.plot(path=tmp_path / "third.png")  # the recipe's LR is the result's own
    assert any("recipe peak 0.4" in t.get_text() for t in fig.axes[0].get_legend().get_texts())


def test_bad_arguments_are_one_line(learnable_data):
    cfg = TrainConfig(device="cpu", progress=False)
    with pytest.raises(ConfigError, match="num_iter must be an integer >= 2"):
        lr_find(cfg, learnable_data, num_iter=1)
    with pytest.raises(ConfigError, match="start_lr < end_lr"):
        lr_find(cfg, learnable_data, num_iter=5, start_lr=1.0, end_lr=0.1)
    empty = Cifar10(
        learnable_data.train_images[:0],
        learnable_data.train_labels[:0],
        learnable_data.test_images,
        learnable_data.test_labels,
    )
    with pytest.raises(ConfigError, match="training split is empty") as e:
        lr_find(cfg, empty, num_iter=5)
    assert "\n" not in str(e.value)


def test_a_plot_that_cannot_be_saved_is_one_line(learnable_data, tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from cifarkit.base import CifarkitError

    def read_only(self, *a, **k):  # what a read-only folder does (root ignores a chmod)
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Figure, "savefig", read_only)
    cfg = TrainConfig(
        batch_size=64, device="cpu", precision="fp32", progress=False, out=str(tmp_path / "run")
    )
    with pytest.raises(CifarkitError) as e:
        lr_find(
            cfg,
            learnable_data,
            num_iter=3,
            start_lr=1e-3,
            end_lr=1e-1,
            path=tmp_path / "ro" / "lr.png",
        )
    assert str(e.value) == f"cannot save the figure {tmp_path / 'ro' / 'lr.png'}: Permission denied"


def test_a_second_call_shows_the_kept_result_and_a_change_runs_it_again(
    learnable_data, tmp_path, monkeypatch, capsys
):
    import cifarkit.training.lrfind as lrfind_mod

    cfg = TrainConfig(
        batch_size=64, device="cpu", precision="fp32", progress=False, out=str(tmp_path / "run")
    )
    first = lr_find(cfg, learnable_data, model=small_net, num_iter=6, start_lr=1e-4, end_lr=1.0)
    assert len(list((tmp_path / "run").glob("lr-range-*.json"))) == 1
    real, calls = lrfind_mod.lr_range_test, []

    def counted(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(lrfind_mod, "lr_range_test", counted)
    capsys.readouterr()
    again = lr_find(cfg, learnable_data, model=small_net, num_iter=6, start_lr=1e-4, end_lr=1.0)
    # a second "Run all": shown, not trained again
    assert not calls and again.to_dict() == first.to_dict()
    assert "the result kept in run/lr-range-" in capsys.readouterr().out
    lr_find(
        TrainConfig(**{**cfg.to_dict(), "epochs": 5, "lr": 0.1}),
        learnable_data,
        model=small_net,
        num_iter=6,
        start_lr=1e-4,
        end_lr=1.0,
    )
    assert not calls  # fields the test never reads do not matter

    def wider():
        return nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(16, 10),
        )

    for changed in (
        dict(model=wider),
        dict(cfg=TrainConfig(**{**cfg.to_dict(), "weight_decay": 0.0})),
        dict(num_iter=7),
        dict(keep=False),
    ):
        args = {**dict(cfg=cfg, model=small_net, num_iter=6), **changed}
        lr_find(args.pop("cfg"), learnable_data, start_lr=1e-4, end_lr=1.0, **args)
    assert len(calls) == 4
    assert len(list((tmp_path / "run").glob("lr-range-*.json"))) == 4  # keep=False wrote nothing


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d.update(lrs=[], losses=[], raw_losses=[]),
        lambda d: d.update(suggestion=0.0),
        lambda d: d.update(min_loss_lr=None),
        lambda d: d.update(losses=d["losses"][:-1]),
    ],
)
def test_a_kept_result_that_no_range_test_gives_is_measured_again(
    learnable_data, tmp_path, capsys, edit
):
    cfg = TrainConfig(
        batch_size=64, device="cpu", precision="fp32", progress=False, out=str(tmp_path / "run")
    )
    first = lr_find(cfg, learnable_data, model=small_net, num_iter=6, start_lr=1e-4, end_lr=1.0)
    (kept,) = (tmp_path / "run").glob("lr-range-*.json")
    d = json.loads(kept.read_text())
    edit(d)
    kept.write_text(json.dumps(d))
    capsys.readouterr()
    again = lr_find(cfg, learnable_data, model=small_net, num_iter=6, start_lr=1e-4, end_lr=1.0)
    assert "the result kept in" not in capsys.readouterr().out  # measured again, no traceback
    assert again.lrs == first.lrs and again.suggestion == first.suggestion > 0
