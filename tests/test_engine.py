"""train_one_epoch / evaluate return dicts, learn, stop on divergence; schedules and precision choice."""
import pytest
import torch

from cifarkit import (DeviceLoader, DivergenceError, TrainConfig, create_model, evaluate, make_optimizer,
                      make_scheduler, resolve_precision, train_one_epoch)
from cifarkit.engine import EMA, lr_factor, score


def loaders(data, batch=50):
    return (DeviceLoader(data.train_images, data.train_labels, batch, train=True, seed=0),
            DeviceLoader(data.test_images, data.test_labels, 100, train=False))


def test_training_learns_and_reports(learnable_data, capsys):
    torch.manual_seed(0)
    cfg = TrainConfig(epochs=6, lr=0.05, batch_size=50)
    model = create_model("seed")
    train, test = loaders(learnable_data)
    opt = make_optimizer(model, cfg)
    sched = make_scheduler(opt, cfg, len(train))
    before = evaluate(model, test, verbose=False)
    for epoch in range(cfg.epochs):
        train.set_epoch(epoch)
        r = train_one_epoch(model, train, opt, sched, epoch=epoch, progress=False)
    assert set(r) >= {"loss", "accuracy", "correct", "total", "seconds", "lr", "lrs"}
    assert r["total"] == 200 and len(r["lrs"]) == len(train)
    after = evaluate(model, test)
    assert after["accuracy"] > max(50.0, before["accuracy"] + 20)
    out = capsys.readouterr().out
    assert f"Test set: Average loss: {after['loss']:.4f}, Accuracy: {after['correct']}/100 (" in out


def test_nan_loss_stops_with_step_and_lr(learnable_data):
    model = create_model("seed")
    with torch.no_grad():
        model.fc.bias.fill_(float("nan"))
    train, _ = loaders(learnable_data)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    with pytest.raises(DivergenceError, match=r"loss is nan at epoch 3, step 1 \(lr 0.5\).*Lower --lr"):
        train_one_epoch(model, train, opt, epoch=2, progress=False)


def test_score_matches_counts():
    probs = torch.tensor([[0.7, 0.3], [0.4, 0.6], [0.9, 0.1]])
    r = score(probs, torch.tensor([0, 0, 0]), verbose=False)
    assert (r["correct"], r["total"]) == (2, 3) and r["accuracy"] == pytest.approx(200 / 3)
    assert r["loss"] == pytest.approx(-(torch.log(torch.tensor([0.7, 0.4, 0.9]))).mean().item(), rel=1e-5)


def test_flip_tta_is_invariant_to_mirroring(learnable_data):
    from cifarkit import predict
    model = create_model("seed").eval()
    x, y = learnable_data.test_images[:20], learnable_data.test_labels[:20]
    p1, _ = predict(model, DeviceLoader(x, y, 10, train=False), tta="flip")
    p2, _ = predict(model, DeviceLoader(x.flip(3), y, 10, train=False), tta="flip")
    assert torch.allclose(p1, p2, atol=1e-5)


@pytest.mark.parametrize("schedule", ["onecycle", "linear", "constant"])
def test_schedules_peak_at_lr_and_end_low(schedule):
    cfg = TrainConfig(epochs=2, lr=0.4, schedule=schedule, warmup=0.25)
    opt = make_optimizer(create_model("seed"), cfg)
    sched = make_scheduler(opt, cfg, 10)
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert max(lrs) == pytest.approx(0.4)
    if schedule == "constant":
        assert min(lrs) == pytest.approx(0.4)
    else:
        assert lrs.index(max(lrs)) == 4  # warmup = 5 of 20 steps: the 5th step runs at the peak
        assert lrs[-1] < 0.05


def test_lr_factor_linear_shape():
    f = [lr_factor(s, 10, "linear", 0.2) for s in range(10)]
    assert f[:2] == [0.5, 1.0] and f[-1] == pytest.approx(1 / 8) and all(a >= b for a, b in zip(f[1:], f[2:]))


def test_weight_decay_spares_batchnorm_and_biases():
    opt = make_optimizer(create_model("seed"), TrainConfig(weight_decay=1e-3))
    decayed, *free = opt.param_groups
    assert decayed["weight_decay"] == 1e-3 and all(p.ndim > 1 for p in decayed["params"])
    assert all(g["weight_decay"] == 0 and all(p.ndim == 1 for p in g["params"]) for g in free)


def test_ema_tracks_weights():
    model = torch.nn.Linear(2, 2)
    ema = EMA(model, 0.5)
    with torch.no_grad():
        model.weight.add_(1.0)
    old = ema.module.weight.clone()
    ema.update(model)
    d = min(0.5, 2 / 11)
    assert torch.allclose(ema.module.weight, old * d + model.weight * (1 - d))


def test_precision_choice():
    assert resolve_precision("fp32", torch.device("cpu")) is None
    assert resolve_precision("bf16", torch.device("cpu")) == torch.bfloat16
    assert resolve_precision("auto", torch.device("cpu")) in (None, torch.bfloat16)


def test_lr_factor_start_and_end_fractions():
    f = [lr_factor(s, 100, "linear", 0.2, start=0.2, end=0.07) for s in range(100)]
    assert f[0] == pytest.approx(0.2 + 0.8 / 20) and max(f) == 1.0 and f.index(1.0) == 19
    assert f[-1] == pytest.approx(0.07 + 0.93 / 80)


def test_bias_lr_scale_applies_to_batchnorm_parameters_only():
    cfg = TrainConfig(model="compact", lr=0.1, bias_lr_scale=64, schedule="linear")
    model = create_model("compact")
    opt = make_optimizer(model, cfg)
    weights, biases, norms = opt.param_groups
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.1, pytest.approx(6.4)]
    assert [id(p) for p in biases["params"]] == [id(model.whiten.bias)]  # a conv bias: normal LR
    assert all(p.ndim == 1 for p in norms["params"]) and len(norms["params"]) == 6
    make_scheduler(opt, cfg, 10)
    assert norms["lr"] / weights["lr"] == pytest.approx(64)


def test_lookahead_pulls_weights_towards_their_average():
    from cifarkit.engine import Lookahead
    model = torch.nn.Linear(1, 1, bias=False)
    la = Lookahead(total=20, start=0.0, every=1)
    with torch.no_grad():
        model.weight.fill_(0.0)
    la.update(model)                      # step 1: the average starts at the current weights (0)
    with torch.no_grad():
        model.weight.fill_(1.0)           # an optimiser step moves the weight to 1
    la.update(model)                      # step 2: pulled back towards 0 by decay 0.95 * (2/20)^3
    d = 0.95 * (2 / 20) ** 3
    assert model.weight.item() == pytest.approx(1 - d)
    la.sync(model)
    assert model.weight.item() == pytest.approx(1 - d)


def test_flip_translate_tta_averages_six_views(learnable_data):
    from cifarkit import predict
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 10, 5), torch.nn.Flatten(), torch.nn.LazyLinear(10))
    loader = DeviceLoader(learnable_data.test_images[:10], learnable_data.test_labels[:10], 10, train=False)
    plain, _ = predict(model, loader, tta="none")
    six, _ = predict(model, loader, tta="flip-translate")
    assert six.shape == plain.shape and torch.allclose(six.sum(1), torch.ones(10))
    assert not torch.allclose(six, plain)
