"""Receptive field against hand-computed values, course-rule checks, confusion matrix, mistakes."""

import threading

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cifarkit.analysis.metrics import confusion_matrix, misclassified, per_class_accuracy
from cifarkit.analysis.rules import (
    check_rules,
    final_receptive_field,
    format_rf_table,
    format_rules,
    receptive_field,
)
from cifarkit.analysis.summary import summary_text
from cifarkit.models import build_model


def rfs(model, size=(3, 32, 32)):
    return [r.rf for r in receptive_field(model, size)]


def test_two_3x3_convs_see_5_pixels():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))
    assert rfs(net) == [3, 5]


def test_pool_doubles_the_step_of_later_layers():
    # conv3 -> RF 3; pool2 -> 3 + 1*1 = 4, jump 2; conv3 -> 4 + 2*2 = 8
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3, padding=1)
    )
    rows = receptive_field(net)
    assert [r.rf for r in rows] == [3, 4, 8]
    assert [r.jump for r in rows] == [1, 2, 2]


def test_dilation_and_stride():
    # dilated 3x3 (d=2) covers 5 px; a stride-2 conv then adds 2 * 1 * ... : 5 + 2 = 7, jump 2;
    # a 1x1 adds nothing.
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=2, dilation=2),
        nn.Conv2d(4, 4, 3, stride=2, padding=1),
        nn.Conv2d(4, 4, 1),
    )
    rows = receptive_field(net)
    assert [r.rf for r in rows] == [5, 7, 7]
    assert [r.jump for r in rows] == [1, 2, 2]


def test_seed_receptive_field_layer_by_layer():
    rows = receptive_field(build_model("seed"))
    # the global average pool's outputs see the whole image: no number ("all"), the rule counts the
    # 84 entering it
    assert [r.rf for r in rows] == [3, 5, 6, 10, 14, 16, 24, 32, 36, 68, 84, 84, None]
    assert rows[-1].scope == "global" and rows[-1].name == "gap"
    assert final_receptive_field(build_model("seed")) == 84 > 44
    table = format_rf_table(rows)
    assert "c4.0.0          Conv2d               3  1  2  2     8   68  [128, 4, 4]" in table
    assert "gap             AdaptiveAvgPool2d    4  4  0  1     -  all  [256, 1, 1]" in table
    assert (
        table.splitlines()[-1]
        == "gap: global average pool, each output averages the whole 4x4 map; "
        "the rule counts the RF entering it: 84 px"
    )


def test_compact_receptive_field_is_59():
    # whiten conv2: 2 | conv3: 4 | pool2: 5, jump 2 | conv3: 9 | conv3: 13 | pool2: 15, jump 4
    # dilated conv3 d2: 15 + 2*2*4 = 31 | conv3: 39 | pool2: 43, jump 8 | depthwise conv3: 59 | 1x1:
    # 59
    assert final_receptive_field(build_model("compact")) == 59


def test_rules_pass_for_seed_and_report_numbers():
    checks = {c.rule: c for c in check_rules(build_model("seed"))}
    assert all(c.passed for rule, c in checks.items() if rule != "test accuracy >= 80%")
    assert checks["test accuracy >= 80%"].passed is None  # not measured: neither PASS nor FAIL
    assert checks["parameters < 1,000,000"].value == "467,098"
    assert checks["receptive field > 44"].value == "84 px"
    assert "dilation 2" in checks["dilated conv"].value


def test_rules_fail_for_a_plain_net():
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 32 * 32, 10)
    )
    checks = {c.rule: c for c in check_rules(net)}
    assert not checks["receptive field > 44"].passed
    assert not checks["depthwise-separable conv"].passed
    assert not checks["dilated conv"].passed
    assert not checks["global average pooling"].passed
    assert checks["parameters < 1,000,000"].passed


def test_grouped_conv_that_is_not_depthwise_does_not_count():
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.Conv2d(8, 8, 3, padding=1, groups=2),
        nn.Conv2d(8, 8, 1),
        nn.AdaptiveAvgPool2d(1),
    )
    assert not {c.rule: c for c in check_rules(net)}["depthwise-separable conv"].passed


def test_tracing_leaves_batchnorm_statistics_alone():
    model = build_model("seed").train()
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


# ---------------------------------------------------------------- structure seen from what runs
def rules_of(net, **kw):
    return {c.rule: c for c in check_rules(net, **kw)}


class SqueezeExcite(nn.Module):
    """A global average pool inside a block, scaling the map: attention, not the classifier's
    pooling."""

    def __init__(self, c):
        super().__init__()
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(c, c)

    def forward(self, x):
        s = torch.sigmoid(self.fc(self.pool(x).view(x.size(0), -1))).view(x.size(0), -1, 1, 1)
        return x * s.expand_as(x)


def test_squeeze_excitation_pool_is_not_the_head_and_flatten_gives_the_rf():
    # conv3 -> 3 | SE keeps 3 | pool2: 4, jump 2 | conv3: 8 | flatten: the classifier sees RF 8
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        SqueezeExcite(8),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.Flatten(),
        nn.Linear(8 * 16 * 16, 10),
    )
    checks = rules_of(net)
    assert checks["receptive field > 44"].value == "8 px"
    assert not checks["global average pooling"].passed
    assert "1.pool feed back into the feature maps" in checks["global average pooling"].value
    notes = receptive_field(net).notes
    assert any("no global pool" in n and ": 8 px" in n for n in notes)


def test_gap_written_as_view_then_mean():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)

        def forward(self, x):
            x = self.conv(x)
            return x.view(x.size(0), x.size(1), -1).mean(dim=2)

    checks = rules_of(Net())
    assert checks["global average pooling"].value == "x.mean in forward"
    assert checks["receptive field > 44"].value == "3 px"


def test_functional_dilated_conv_and_depth_multiplier():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.w1 = nn.Parameter(torch.randn(8, 3, 3, 3))
            self.dw = nn.Conv2d(8, 16, 3, padding=1, groups=8)  # depthwise with depth multiplier 2
            self.pw = nn.Conv2d(16, 16, 1)

        def forward(self, x):
            x = F.conv2d(x, self.w1, padding=2, dilation=(2, 1))  # dilated in one axis only
            return self.pw(F.dropout(F.relu(self.dw(x)), 0.1, self.training)).amax((2, 3))

    checks = rules_of(Net())
    assert checks["dilated conv"].value == "F.conv2d in forward (dilation 2x1)"
    assert checks["depthwise-separable conv"].value == "dw + pw"
    assert (
        checks["global average pooling"].value
        == "none (x.amax in forward is a global max pool, not an average)"
    )
    # conv 3x3 with dilation (2, 1): RF 5 high, 3 wide; depthwise conv3: 7x5; the rule counts the
    # smaller side
    assert checks["receptive field > 44"].value == "7x5 px"
    assert final_receptive_field(Net()) == 5


def test_paths_with_different_jumps_make_later_windows_unknown():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x):
            x = self.a(x)
            # a crop (jump 1) added to a pooled map (jump 2)
            x = x[:, :, :16, :16] + F.max_pool2d(x, 2)
            return self.b(x).mean((2, 3))

    checks = rules_of(Net())
    assert checks["receptive field > 44"].passed is None
    assert "joins maps with different jumps" in checks["receptive field > 44"].value


def test_padding_and_crops_keep_the_rf():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = (
                nn.Conv2d(3, 4, 3),
                nn.Conv2d(4, 4, 3, padding_mode="reflect", padding=1),
            )

        def forward(self, x):  # conv3 -> 3 | pad, crop: 3 | conv3: 5
            return self.b(F.pad(self.a(x), (1, 1, 1, 1))[..., 1:-1, 1:-1]).mean((-1, -2))

    assert rules_of(Net())["receptive field > 44"].value == "5 px"


def test_shared_module_is_reported_once():
    conv = nn.Conv2d(4, 4, 3, padding=2, dilation=2)
    net = nn.Sequential(nn.Conv2d(3, 4, 1), conv, conv, nn.AdaptiveAvgPool2d(1))
    assert rules_of(net)["dilated conv"].value == "1 (Conv2d) (dilation 2)"
    assert [r.rf for r in receptive_field(net)][:3] == [1, 5, 9]


def test_summary_falls_back_to_one_line_when_torchsummary_cannot_cope():
    class Split(nn.Module):  # a layer returning a tuple
        def forward(self, x):
            return x[:, :1], x[:, 1:].mean((2, 3))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.split = nn.Conv2d(3, 4, 3), Split()

        def forward(self, x):
            return self.split(self.conv(x))[0].flatten(1)[:, :10]

    # no parameters
    for net in (Net(), nn.Sequential(nn.MaxPool2d(2), nn.Flatten(), nn.AdaptiveAvgPool1d(10))):
        text = summary_text(net)
        assert text.startswith("(torchsummary cannot tabulate this network: ")
        assert "Traceback" not in text


def test_a_summary_whose_total_is_not_the_networks_says_the_true_count():
    class Shared(nn.Module):  # one conv called twice, and a parameter outside any layer
        def __init__(self):
            super().__init__()
            self.conv, self.scale = nn.Conv2d(3, 3, 3, padding=1), nn.Parameter(torch.ones(1))
            self.fc = nn.Linear(3, 10)

        def forward(self, x):
            return self.fc((self.conv(self.conv(x)) * self.scale).mean((2, 3)))

    text = summary_text(Shared())
    assert "Total params: 208" in text  # torchsummary: 84 twice + 40, the scale missed
    assert "the network has 125 parameters, each counted once" in text
    plain = summary_text(nn.Sequential(nn.Conv2d(3, 10, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()))
    assert "Total params: 280" in plain and "each counted once" not in plain


def test_uncopyable_model_is_analysed_in_place_and_restored():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1)).train()
    net.lock = threading.Lock()  # deepcopy fails on this
    with pytest.raises(TypeError):
        import copy

        copy.deepcopy(net)
    before = net[1].running_mean.clone()
    assert rules_of(net)["receptive field > 44"].value == "3 px"
    assert net.training and net[1].training and torch.equal(net[1].running_mean, before)


def test_format_rules_tokens():
    text = format_rules(check_rules(build_model("seed"), accuracy=90.0))
    assert "[PASS] receptive field > 44       84 px" in text
    assert "[PASS] test accuracy >= 80%       90.00%" in text


@pytest.mark.parametrize(
    "pool, gap",
    [
        (lambda x: x.mean(3).mean(2), True),  # GAP in two steps
        (lambda x: F.relu(x.max(dim=-1)[0]).max(dim=-1)[0], False),  # global max pool in two steps
        # pooled over the width only: RF unknown
        (lambda x: x.mean(-1).flatten(1), None),
    ],
)
def test_pooling_one_axis_at_a_time(pool, gap):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 5, padding=2)

        def forward(self, x):
            return pool(self.conv(x))

    checks = rules_of(Net())
    if gap is None:
        assert checks["receptive field > 44"].passed is None
        assert "pooled over one spatial axis only" in checks["receptive field > 44"].value
    else:
        assert checks["global average pooling"].passed is gap
        assert checks["receptive field > 44"].value == "5 px"


def test_tables_and_verdicts_print_as_themselves():
    # print(ck.receptive_field(net)) / print(ck.check_rules(net)): what the notebook and `summary`
    # show.
    model = build_model("seed")
    assert str(receptive_field(model)) == format_rf_table(receptive_field(model))
    assert str(check_rules(model)) == format_rules(check_rules(model))
    assert str(check_rules(model)).count("\n") == 5  # six rules, one line each
