"""fit(): the run folder, history, resume, Ctrl-C, divergence, overwrite protection, validation
split."""

import csv
import json

import pytest
import torch

import cifarkit.training.trainer as trainer_mod
from cifarkit.base import CifarkitError
from cifarkit.config import TrainConfig
from cifarkit.runfolder.checkpoint import load_checkpoint
from cifarkit.runfolder.signals import RunStopped
from cifarkit.training.step import DivergenceError
from cifarkit.training.trainer import fit

from conftest import DEVICES, interrupt_in_epoch_2, make_learnable_data


def cfg_for(tmp_path, **kw):
    base = dict(
        epochs=2,
        batch_size=50,
        lr=0.05,
        progress=False,
        out=str(tmp_path / "run"),
        precision="fp32",
        eval_batch_size=50,
    )
    return TrainConfig(**{**base, **kw})


def test_fit_writes_the_run_folder(tmp_path, learnable_data):
    r = fit(cfg_for(tmp_path), data=learnable_data)
    run = tmp_path / "run"
    assert {p.name for p in run.iterdir()} == {
        "config.json",
        "history.csv",
        "history.json",
        "last.pt",
        "best.pt",
        "results.json",
    }  # the .lock is gone
    assert json.loads((run / "config.json").read_text()) == r.config.to_dict()
    assert r.config.data_fingerprint.startswith("200+100:")
    rows = list(csv.DictReader(open(run / "history.csv")))
    assert [int(row["epoch"]) for row in rows] == [1, 2]
    hist = json.loads((run / "history.json").read_text())
    assert len(hist[0]["lrs"]) == 4  # 200 images / 50 per step
    res = json.loads((run / "results.json").read_text())
    assert res["single_view_accuracy"] == hist[-1]["eval_accuracy"] and res["eval_set"] == "test"
    assert load_checkpoint(run / "last.pt")["epoch"] == 2


@pytest.mark.slow  # seconds of real training: the full suite runs it, the inner loop skips it
def test_same_seed_same_numbers(tmp_path, learnable_data, device):
    a = fit(cfg_for(tmp_path / "a", device=device), data=learnable_data)
    b = fit(cfg_for(tmp_path / "b", device=device), data=learnable_data)
    assert a.runtime.deterministic and a.runtime.torch_device.type == device
    strip = lambda h: [{k: v for k, v in row.items() if "second" not in k} for row in h]  # noqa: E731
    assert strip(a.history) == strip(b.history)
    c = fit(cfg_for(tmp_path / "c", seed=1, device=device), data=learnable_data)
    assert strip(c.history) != strip(a.history)


# the recipe of the interrupted runs below: EMA and dropout, so that resuming must restore both
CUT = dict(epochs=3, ema=0.9, lookahead=False, dropout=0.1)


@pytest.fixture(scope="module", params=DEVICES)
def straight(tmp_path_factory, request):
    """The uninterrupted run of CUT, on each device present, that every interrupted and resumed run
    on that device must equal (`straight.config.device`)."""
    cfg = cfg_for(tmp_path_factory.mktemp("straight"), **CUT, device=request.param)
    return fit(cfg, data=make_learnable_data())


@pytest.mark.slow  # seconds of real training: the full suite runs it, the inner loop skips it
def test_interrupt_then_resume_equals_uninterrupted(
    tmp_path, learnable_data, straight, monkeypatch, capsys
):
    real = interrupt_in_epoch_2(monkeypatch)
    with pytest.raises(RunStopped) as stopped:  # Run all stops here
        fit(cfg_for(tmp_path / "cut", **CUT, device=straight.config.device), data=learnable_data)
    cut = stopped.value.result
    assert cut.interrupted and len(cut.history) == 1
    assert "Interrupted during epoch 2" in str(stopped.value) and "\n" not in str(stopped.value)
    err = capsys.readouterr().err  # the interrupt message goes to stderr
    assert (
        "Interrupted during epoch 2" in err
        and 'fit(cfg, resume="auto")' in err
        and "last.pt" in err
    )
    monkeypatch.setattr(trainer_mod, "train_one_epoch", real)

    resumed = fit(
        TrainConfig(progress=False, device=straight.config.device),
        data=learnable_data,
        resume=tmp_path / "cut" / "run" / "last.pt",
    )
    keys = ("train_loss", "train_accuracy", "eval_loss", "eval_accuracy", "lrs")
    assert [[h[k] for k in keys] for h in resumed.history] == [
        [h[k] for k in keys] for h in straight.history
    ]
    for (k, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k


def test_finished_run_is_not_overwritten(tmp_path, learnable_data):
    fit(cfg_for(tmp_path, epochs=1), data=learnable_data)
    before = (tmp_path / "run" / "last.pt").read_bytes()
    with pytest.raises(CifarkitError, match="already holds a finished run.*overwrite=True"):
        fit(cfg_for(tmp_path, epochs=1), data=learnable_data)
    assert (tmp_path / "run" / "last.pt").read_bytes() == before
    fit(cfg_for(tmp_path, epochs=1, seed=5), data=learnable_data, overwrite=True)
    assert load_checkpoint(tmp_path / "run" / "last.pt")["config"]["seed"] == 5


def test_divergence_stops_and_keeps_last_good_checkpoint(
    tmp_path, learnable_data, monkeypatch, device
):
    real = trainer_mod.train_one_epoch

    def poison_epoch_2(step, *a, **k):
        if k["epoch"] == 1:
            with torch.no_grad():
                # what an exploding learning rate does, at once
                step.model.fc.weight.mul_(float("inf"))
        return real(step, *a, **k)

    monkeypatch.setattr(trainer_mod, "train_one_epoch", poison_epoch_2)
    with pytest.raises(
        DivergenceError, match=r"loss is nan at epoch 2, step 1 \(lr .*\).*Lower --lr"
    ):
        # check_every=1: the loss is read at every step on a GPU too (a CPU reads it always)
        fit(cfg_for(tmp_path, epochs=3, device=device, check_every=1), data=learnable_data)
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")  # the good one from epoch 1, intact
    assert ckpt["epoch"] == 1 and all(torch.isfinite(t).all() for t in ckpt["model"].values())
    assert not (tmp_path / "run" / "results.json").exists()
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.endswith(".tmp")]


def test_exploding_learning_rate_is_caught(tmp_path, learnable_data):
    with pytest.raises(DivergenceError, match="loss is (nan|inf)"):
        fit(cfg_for(tmp_path, lr=1e30, schedule="constant", epochs=3), data=learnable_data)


def test_validation_split_tests_once_at_the_end(tmp_path, learnable_data):
    r = fit(cfg_for(tmp_path, val_split=50), data=learnable_data)
    assert all(h["eval_total"] == 50 for h in r.history)
    assert r.final["eval_set"] == "validation" and r.final["test_total"] == 100


def test_limits_take_balanced_subsets(tmp_path, learnable_data):
    r = fit(cfg_for(tmp_path, epochs=1, limit_train=100, limit_test=30), data=learnable_data)
    assert r.history[0]["eval_total"] == 30 and len(r.history[0]["lrs"]) == 2


def test_tta_is_a_separate_final_result_and_epochs_count_from_1(tmp_path, learnable_data, capsys):
    r = fit(cfg_for(tmp_path, epochs=2, progress=True, tta="flip-translate"), data=learnable_data)
    out = capsys.readouterr().out
    assert "EPOCH: 1" in out and "EPOCH: 2" in out and "EPOCH: 0" not in out
    assert all(h["eval_tta"] == "none" for h in r.history)  # every per-epoch row is single view
    res = r.final
    assert res["single_view_correct"] == r.history[-1]["eval_correct"]
    assert f"Final test, flip-translate TTA (6 views): Accuracy: {res['tta_correct']}/100 " in out
    assert out.count("Test set: Average loss") == 2  # one single-view line per epoch, nothing more
    # the TTA number really is another evaluation of the same weights
    _, _, probs = r.test_predictions(tta="flip-translate")
    assert int((probs.argmax(1) == learnable_data.test_labels).sum()) == res["tta_correct"]
    best = load_checkpoint(tmp_path / "run" / "best.pt")
    assert best["epoch"] == res["best_eval_epoch"]


def test_precision_choice_and_reason_are_saved(tmp_path, learnable_data):
    r = fit(cfg_for(tmp_path, epochs=1), data=learnable_data)
    assert r.final["precision"] == "fp32" and r.final["precision_reason"]


def test_resume_refuses_changes_and_other_data(tmp_path, learnable_data):
    fit(cfg_for(tmp_path, epochs=2), data=learnable_data)
    last = tmp_path / "run" / "last.pt"
    with pytest.raises(CifarkitError, match="holds a finished run .*nothing to resume"):
        fit(cfg_for(tmp_path, epochs=2), data=learnable_data, resume=last)
    (tmp_path / "run" / "results.json").unlink()  # as if it had been stopped during the final test
    with pytest.raises(CifarkitError, match="refusing to change lr"):
        fit(cfg_for(tmp_path, epochs=2, lr=0.3), data=learnable_data, resume=last)
    other = type(learnable_data)(
        learnable_data.train_images.flip(3),
        learnable_data.train_labels,
        learnable_data.test_images,
        learnable_data.test_labels,
    )
    with pytest.raises(CifarkitError, match="not the dataset this run started on"):
        fit(cfg_for(tmp_path, epochs=2), data=other, resume=last)


# ---------------------------------------------------------------- resume="auto": the notebook's
# mode
def test_auto_loads_a_finished_run_without_training(tmp_path, learnable_data, monkeypatch, capsys):
    first = fit(cfg_for(tmp_path), data=learnable_data, resume="auto")
    assert not first.loaded and first.final
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()}

    def no_training(*a, **k):
        raise AssertionError("a finished run must not train again")

    monkeypatch.setattr(trainer_mod, "train_one_epoch", no_training)
    capsys.readouterr()
    # runtime field differs
    again = fit(cfg_for(tmp_path, progress=True), data=learnable_data, resume="auto")
    out = capsys.readouterr().out
    assert again.loaded and again.final == first.final and again.history == first.history
    assert "loaded, not trained again" in out and "final test accuracy: single view" in out
    # nothing rewritten
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()} == before
    # the loaded weights are the evaluated ones: the same predictions as the trained model
    _, _, p1 = first.test_predictions()
    _, _, p2 = again.test_predictions()
    assert torch.equal(p1.argmax(1), p2.argmax(1))


@pytest.mark.slow  # seconds of real training: the full suite runs it, the inner loop skips it
def test_auto_resumes_an_interrupted_run_exactly(tmp_path, learnable_data, straight, monkeypatch):
    real = interrupt_in_epoch_2(monkeypatch)
    cfg = cfg_for(tmp_path / "cut", **CUT, device=straight.config.device)
    with pytest.raises(RunStopped) as stopped:
        fit(cfg, data=learnable_data, resume="auto")
    cut = stopped.value.result
    assert cut.interrupted and len(cut.history) == 1
    monkeypatch.setattr(trainer_mod, "train_one_epoch", real)
    # the same cell again
    resumed = fit(cfg, data=learnable_data, resume="auto")
    assert (
        not resumed.loaded
        and resumed.final["single_view_correct"] == straight.final["single_view_correct"]
    )
    strip = lambda h: [{k: v for k, v in row.items() if "second" not in k} for row in h]  # noqa: E731
    assert strip(resumed.history) == strip(straight.history)


@pytest.mark.slow  # seconds of real training: the full suite runs it, the inner loop skips it
def test_auto_refuses_other_settings_in_python_words(tmp_path, learnable_data):
    fit(cfg_for(tmp_path), data=learnable_data, resume="auto")
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()}
    with pytest.raises(CifarkitError) as e:
        fit(cfg_for(tmp_path, lr=0.1), data=learnable_data, resume="auto")
    msg = str(e.value)
    assert (
        "\n" not in msg
        and "lr=0.1 (run: 0.05)" in msg
        and "overwrite=True" in msg
        and "cfg.out" in msg
    )
    assert "--" not in msg  # Python words, not command-line flags
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()} == before
    retrained = fit(cfg_for(tmp_path, lr=0.1), data=learnable_data, resume="auto", overwrite=True)
    assert (
        not retrained.loaded
        and json.loads((tmp_path / "run" / "config.json").read_text())["lr"] == 0.1
    )
