"""Receptive field against hand-computed values, course-rule checks, confusion matrix, mistakes."""
import torch
from torch import nn

from cifarkit import (check_rules, confusion_matrix, create_model, final_receptive_field, misclassified,
                      per_class_accuracy, receptive_field)
from cifarkit.analysis import format_rf_table


def rfs(model, size=(3, 32, 32)):
    return [r.rf for r in receptive_field(model, size)]


def test_two_3x3_convs_see_5_pixels():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))
    assert rfs(net) == [3, 5]


def test_pool_doubles_the_step_of_later_layers():
    # conv3 -> RF 3; pool2 -> 3 + 1*1 = 4, jump 2; conv3 -> 4 + 2*2 = 8
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3, padding=1))
    rows = receptive_field(net)
    assert [r.rf for r in rows] == [3, 4, 8]
    assert [r.jump for r in rows] == [1, 2, 2]


def test_dilation_and_stride():
    # dilated 3x3 (d=2) covers 5 px; a stride-2 conv then adds 2 * 1 * ... : 5 + 2 = 7, jump 2;
    # a 1x1 adds nothing.
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=2, dilation=2), nn.Conv2d(4, 4, 3, stride=2, padding=1),
                        nn.Conv2d(4, 4, 1))
    rows = receptive_field(net)
    assert [r.rf for r in rows] == [5, 7, 7]
    assert [r.jump for r in rows] == [1, 2, 2]


def test_seed_receptive_field_layer_by_layer():
    rows = receptive_field(create_model("seed"))
    assert [r.rf for r in rows] == [3, 5, 6, 10, 14, 16, 24, 32, 36, 68, 84, 84, 108]
    assert final_receptive_field(create_model("seed")) == 84 > 44
    assert "c4.0.0" in format_rf_table(rows)


def test_rules_pass_for_seed_and_report_numbers():
    checks = {c.rule: c for c in check_rules(create_model("seed"))}
    assert all(c.passed for c in checks.values())
    assert checks["parameters < 1,000,000"].value == "467,098"
    assert checks["receptive field > 44"].value == "84 px"
    assert "dilation 2" in checks["dilated conv"].value


def test_rules_fail_for_a_plain_net():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 32 * 32, 10))
    checks = {c.rule: c for c in check_rules(net)}
    assert not checks["receptive field > 44"].passed
    assert not checks["depthwise-separable conv"].passed
    assert not checks["dilated conv"].passed
    assert not checks["global average pooling"].passed
    assert checks["parameters < 1,000,000"].passed


def test_grouped_conv_that_is_not_depthwise_does_not_count():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1, groups=2),
                        nn.Conv2d(8, 8, 1), nn.AdaptiveAvgPool2d(1))
    assert not {c.rule: c for c in check_rules(net)}["depthwise-separable conv"].passed


def test_tracing_leaves_batchnorm_statistics_alone():
    model = create_model("seed").train()
    before = model.c1[0][2].running_mean.clone()
    check_rules(model)
    assert torch.equal(model.c1[0][2].running_mean, before)
    assert model.training


def test_confusion_matrix_and_per_class_accuracy():
    labels = torch.tensor([0, 0, 1, 1, 2])
    preds = torch.tensor([0, 1, 1, 1, 0])
    cm = confusion_matrix(preds, labels, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert per_class_accuracy(cm).tolist() == [50.0, 100.0, 0.0]


def test_misclassified_most_confident_first():
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.7, 0.3]])
    labels = torch.tensor([0, 0, 0, 1])
    assert misclassified(probs, labels).tolist() == [1, 3, 2]
    assert misclassified(probs, labels, k=2).tolist() == [1, 3]
