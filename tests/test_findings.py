"""The written findings and the timing report: generated from the run's numbers, so every number
they state is one the inputs hold, and a re-run rewrites them."""

import re

import torch

from cifarkit.analysis.findings import findings, top_confusions
from cifarkit.base import CLASSES
from cifarkit.models import build_model
from cifarkit.speed import timing_report


def predictions(n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    logits = torch.randn(n, 10, generator=g)
    logits[torch.arange(n), labels] += 3.0  # mostly right
    cat, dog = CLASSES.index("cat"), CLASSES.index("dog")
    cats = (labels == cat).nonzero().flatten()[:12]
    logits[cats, dog] += 10.0  # the cats are mostly taken for dogs
    return labels, logits.softmax(1)


def results_for(probs, labels, **kw):
    correct = int((probs.argmax(1) == labels).sum())
    return {
        "single_view_accuracy": 100 * correct / len(labels),
        "single_view_correct": correct,
        "test_total": len(labels),
        "epochs": 2,
        "tta": "flip-translate",
        "tta_accuracy": None,
        **kw,
    }


def test_findings_state_the_runs_own_numbers():
    labels, probs = predictions()
    images = torch.randint(0, 256, (len(labels), 3, 32, 32), dtype=torch.uint8)
    history = [
        {"train_accuracy": 60.0, "eval_accuracy": 55.0},
        {"train_accuracy": 70.0, "eval_accuracy": 68.0},
    ]
    res = results_for(probs, labels)
    text = findings(
        build_model("seed").eval(), res, history, images, labels, probs, None, CLASSES, k=4
    )
    assert hasattr(text, "_repr_markdown_")
    assert (
        f"{res['single_view_accuracy']:.2f}% single view ({res['single_view_correct']}/200 test"
        " images" in text
    )
    (t, p, n, share), *_ = top_confusions(
        __import__("cifarkit").confusion_matrix(probs.argmax(1), labels), CLASSES
    )
    assert (t, p) == (
        "cat",
        "dog",
    ) and f"cat taken for dog {n} times ({share:.1f}% of the cat images)" in text
    assert "after 2 epochs" in text and "2.0 points above the test accuracy" in text
    assert re.search(r"Grad-CAM on the 4 most confident mistakes\*\* \(read at `c4\.1\.1`", text)
    # 200 test images decide nothing: the accuracy rule is undecided, and the conclusion says so
    assert (
        "No course rule fails; 1 undecided" in text and "on 200 of the 10,000 test images" in text
    )
    assert "not overfitting" in text and "cat / dog" in text


def test_timing_report_explains_varied_epochs_and_compares_with_the_estimate():
    base = {"eval_seconds": 2.0, "images_per_second": 1250.0}
    history = [{**base, "train_seconds": t} for t in (60.0, 38.0, 40.0, 39.0, 90.0)]
    for h in history:
        h["images_per_second"] = 50000 / h["train_seconds"]
    text = timing_report(
        history, {"wall_seconds": 300.0, "hardware": "CPU: X"}, torch.device("cpu")
    )
    assert "epochs: 40.0-92.0 s, median 42.0 s" in text
    assert "epochs 2-5 took 40.0 to 92.0 s (2.3x) for the same work" in text
    assert "names no cause" in text and "outside the run" not in text  # no cause it did not measure
    assert "epoch 1 took 62.0 s, 1.5x the median" in text
    assert (
        "the estimate before training" in text
        or "the estimates before training" in text
        or "never measured" in text
    )
