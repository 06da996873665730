"""The course rules and the receptive field for networks written the ways students write them.

Every receptive field below is computed by hand in the comments, with
    rf_out = rf_in + dilation * (kernel - 1) * jump_in,    jump_out = jump_in * stride
and the RF the rule counts is the one ENTERING global pooling (each output of a global pool sees the
whole image). The verdicts are what a course assistant would give; a tool that says otherwise makes
a student "fix" a network that was fine.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cifarkit.analysis.rules import (
    check_rules,
    final_receptive_field,
    format_rf_table,
    format_rules,
    receptive_field,
)
from cifarkit.analysis.summary import summary_text
from cifarkit.base import CifarkitError
from cifarkit.models import build_model


def verdicts(model, accuracy=None, test_images=None):
    return {c.rule: c for c in check_rules(model, accuracy=accuracy, test_images=test_images)}


def local_rfs(model):
    """RF of every spatial row; "all" for a global pool, "?" where it cannot be followed."""
    return [
        r.rf if r.scope == "local" else {"global": "all", "unknown": "?"}[r.scope]
        for r in receptive_field(model)
    ]


def assert_verdicts(checks, rf, separable, dilated, gap):
    assert checks["receptive field > 44"].passed is rf
    assert checks["depthwise-separable conv"].passed is separable
    assert checks["dilated conv"].passed is dilated
    assert checks["global average pooling"].passed is gap
    assert checks["parameters < 1,000,000"].passed is True


# ---------------------------------------------------------------- (1) EVA4 Session 7 style
class Eva4S7(nn.Module):
    """Plain Sequential blocks, two dilated convs, depthwise + BN + ReLU + 1x1, nn.AvgPool2d(4) on a
    4x4 map."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=2, dilation=2, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(),
        )
        self.pool1 = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Sequential(
            # depthwise
            nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            # pointwise
            nn.Conv2d(32, 64, 1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(),
        )
        self.pool2 = nn.MaxPool2d(2, 2)
        self.conv3 = nn.Sequential(
            nn.Conv2d(64, 64, 3, padding=2, dilation=2, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.Conv2d(64, 128, 3, padding=1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(),
        )
        self.pool3 = nn.MaxPool2d(2, 2)
        self.conv4 = nn.Sequential(
            nn.Conv2d(128, 128, 3, padding=1, bias=False), nn.BatchNorm2d(128), nn.ReLU()
        )
        self.gap = nn.Sequential(nn.AvgPool2d(4))
        self.head = nn.Conv2d(128, 10, 1, bias=False)

    def forward(self, x):
        x = self.pool1(self.conv1(x))
        x = self.pool2(self.conv2(x))
        x = self.pool3(self.conv3(x))
        x = self.head(self.gap(self.conv4(x)))
        return F.log_softmax(x.view(-1, 10), dim=-1)


def test_eva4_session7_network():
    # conv3 -> 3 | dilated conv3 d2: 3 + 2*2*1 = 7 | maxpool2: 7 + 1*1 = 8, jump 2
    # depthwise conv3: 8 + 2*2 = 12 | 1x1: 12 | maxpool2: 12 + 1*2 = 14, jump 4
    # dilated conv3 d2: 14 + 2*2*4 = 30 | conv3: 30 + 2*4 = 38 | maxpool2: 38 + 1*4 = 42, jump 8
    # conv3: 42 + 2*8 = 58 (4x4 map) | AvgPool2d(4) -> 1x1: global average pooling, entering RF 58
    model = Eva4S7()
    assert local_rfs(model) == [3, 7, 8, 12, 12, 14, 30, 38, 42, 58, "all"]
    assert final_receptive_field(model) == 58
    checks = verdicts(model)
    assert_verdicts(checks, rf=True, separable=True, dilated=True, gap=True)
    assert checks["receptive field > 44"].value == "58 px"
    # BN + ReLU between them is fine
    assert checks["depthwise-separable conv"].value == "conv2.0 + conv2.3"
    assert checks["dilated conv"].value == "conv1.3 (dilation 2), conv3.0 (dilation 2)"
    assert checks["global average pooling"].value == "gap.0"
    table = format_rf_table(receptive_field(model))
    assert "gap.0           AvgPool2d            4  4  0  1     -  all  [128, 1, 1]" in table
    assert "the rule counts the RF entering it: 58 px" in table


# ---------------------------------------------------------------- (2) functional calls
class Functional(nn.Module):
    """Layers as attributes, but relu, pooling, global pooling and flattening written as
    functions."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.conv3 = nn.Conv2d(32, 64, 3, padding=1)
        self.dw = nn.Conv2d(64, 64, 3, padding=2, dilation=2, groups=64)  # a dilated depthwise conv
        self.pw = nn.Conv2d(64, 128, 1)
        self.fc = nn.Linear(128, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.max_pool2d(F.relu(self.conv3(x)), 2)
        x = F.relu(self.pw(F.relu(self.dw(x))))
        x = F.adaptive_avg_pool2d(x, 1)
        return self.fc(x.view(x.size(0), -1))


def test_functional_network():
    # conv3 -> 3 | F.max_pool2d 2: 3 + 1 = 4, jump 2 | conv3: 4 + 2*2 = 8 | pool: 8 + 1*2 = 10, jump
    # 4 conv3: 10 + 2*4 = 18 | pool: 18 + 1*4 = 22, jump 8 | depthwise conv3 d2: 22 + 2*2*8 = 54 |
    # 1x1: 54 (hooking nn layers only would see 3, 5, 7, 11, 11: an RF of 11 and no pooling at all)
    model = Functional()
    rows = receptive_field(model)
    assert local_rfs(model) == [3, 4, 8, 10, 18, 22, 54, 54, "all"]
    assert [r.kind for r in rows].count("F.max_pool2d") == 3
    assert rows[1].name == "forward" and rows[1].functional
    checks = verdicts(model)
    assert_verdicts(checks, rf=True, separable=True, dilated=True, gap=True)
    assert checks["receptive field > 44"].value == "54 px"
    assert checks["depthwise-separable conv"].value == "dw + pw"
    assert checks["global average pooling"].value == "F.adaptive_avg_pool2d in forward"
    text = summary_text(model)
    assert "not shown above (functional calls" in text
    assert "  F.max_pool2d in forward -> [16, 16, 16]" in text


# ---------------------------------------------------------------- (3) residual network, x.mean((2,
# 3))
class ResBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c, c, 3, padding=1, bias=False),
            nn.BatchNorm2d(c),
            nn.ReLU(),
            nn.Conv2d(c, c, 3, padding=1, bias=False),
            nn.BatchNorm2d(c),
        )

    def forward(self, x):
        return F.relu(x + self.body(x))


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU()
        )
        self.res1 = ResBlock(32)
        self.down1 = nn.Conv2d(32, 64, 3, stride=2, padding=1)
        self.branch_a = nn.Conv2d(64, 32, 1)
        self.branch_b = nn.Conv2d(64, 32, 3, padding=2, dilation=2)
        self.res2 = ResBlock(64)
        self.dw = nn.Conv2d(64, 64, 3, padding=1, groups=64)
        self.pw = nn.Conv2d(64, 64, 1)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = self.res1(self.stem(x))
        x = self.down1(x)
        x = torch.cat([self.branch_a(x), self.branch_b(x)], dim=1)
        x = self.res2(F.max_pool2d(x, 2))
        x = x + self.pw(F.relu(self.dw(x)))
        x = nn.functional.max_pool2d(x, kernel_size=2, stride=2)
        return self.fc(torch.mean(x, dim=[2, 3]))


def test_residual_network_takes_the_largest_path():
    # stem conv3 -> 3 | res1 body: 3 + 2 = 5, 5 + 2 = 7; x + body(x) -> max(3, 7) = 7
    # down1 conv3 stride 2: 7 + 2*1 = 9, jump 2 | branch_a 1x1: 9; branch_b conv3 d2: 9 + 2*2*2 = 17
    # cat -> max(9, 17) = 17 | max_pool 2: 17 + 1*2 = 19, jump 4 | res2 body: 19 + 2*4 = 27, 27 + 8
    # = 35 dw conv3: 35 + 2*4 = 43 | pw 1x1: 43 | x + pw(..) -> max(35, 43) = 43
    # max_pool 2: 43 + 1*4 = 47, jump 8 (4x4) | torch.mean over (2, 3): global average pool,
    # entering RF 47
    model = Residual()
    assert local_rfs(model) == [3, 5, 7, 9, 9, 17, 19, 27, 35, 43, 43, 47, "all"]
    checks = verdicts(model)
    assert_verdicts(checks, rf=True, separable=True, dilated=True, gap=True)
    assert checks["receptive field > 44"].value == "47 px"
    assert checks["depthwise-separable conv"].value == "dw + pw"
    assert checks["dilated conv"].value == "branch_b (dilation 2)"
    assert checks["global average pooling"].value == "torch.mean in forward"


# ---------------------------------------------------------------- (4) nested Sequentials, global
# max pool
def nested_with_global_max_pool():
    return nn.Sequential(
        nn.Sequential(
            nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU()),
            nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU()),
        ),
        nn.MaxPool2d(2),
        nn.Sequential(
            nn.Sequential(
                nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
            )
        ),
        nn.MaxPool2d(2),
        nn.Sequential(nn.Conv2d(32, 64, 5, padding=2), nn.ReLU()),
        nn.AdaptiveMaxPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    )


def test_nested_sequentials_with_a_global_max_pool():
    # conv3 -> 3 | conv3: 5 | maxpool2: 5 + 1 = 6, jump 2 | conv3: 6 + 2*2 = 10 | maxpool2: 10 + 2 =
    # 12, jump 4 conv5: 12 + 4*4 = 28 | AdaptiveMaxPool2d(1): global MAX pool (not GAP), entering RF
    # 28
    model = nested_with_global_max_pool()
    rows = receptive_field(model)
    assert [r.name for r in rows] == ["0.0.0", "0.1.0", "1", "2.0.0.0", "3", "4.0", "5"]
    assert local_rfs(model) == [3, 5, 6, 10, 12, 28, "all"]
    checks = verdicts(model)
    assert_verdicts(checks, rf=False, separable=False, dilated=False, gap=False)
    assert checks["receptive field > 44"].value == "28 px"
    assert (
        checks["global average pooling"].value
        == "none (5 (AdaptiveMaxPool2d) is a global max pool, not an average)"
    )


# ---------------------------------------------------------------- (5) almost-separable convs
class AlmostSeparable(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 32, 3, padding=1)
        # grouped, but 4 groups != 32 channels
        self.grouped = nn.Conv2d(32, 32, 3, padding=1, groups=4)
        self.pw1 = nn.Conv2d(32, 32, 1)
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)  # depthwise ...
        self.c3 = nn.Conv2d(32, 64, 3, padding=1)  # ... followed by a 3x3, not a 1x1
        self.dw2 = nn.Conv2d(64, 64, 3, padding=1, groups=64)  # depthwise ...
        # ... a max pool, then a "dilated" 1x1
        self.pw2 = nn.Conv2d(64, 128, 1, dilation=2)

    def forward(self, x):
        x = F.max_pool2d(self.pw1(F.relu(self.grouped(self.c1(x)))), 2)
        x = F.max_pool2d(F.relu(self.c3(self.dw(x))), 2)
        x = self.pw2(F.max_pool2d(self.dw2(x), 2))
        return F.avg_pool2d(x, x.shape[-1]).flatten(1)[:, :10]


def test_grouped_and_lonely_depthwise_convs_are_not_separable():
    # c1 conv3 -> 3 | grouped conv3: 5 | 1x1: 5 | pool2: 6, jump 2 | dw conv3: 6 + 2*2 = 10 | conv3:
    # 14
    # pool2: 14 + 2 = 16, jump 4 | dw2 conv3: 16 + 2*4 = 24 | pool2: 24 + 4 = 28, jump 8 | 1x1
    # (dilation 2): 28 F.avg_pool2d(x, x.shape[-1]) on the 4x4 map -> 1x1: global average pooling,
    # entering RF 28
    model = AlmostSeparable()
    assert local_rfs(model) == [3, 5, 5, 6, 10, 14, 16, 24, 28, 28, "all"]
    checks = verdicts(model)
    # a dilated 1x1 conv is the same function as a plain 1x1: it does not count as a dilated conv
    assert_verdicts(checks, rf=False, separable=False, dilated=False, gap=True)
    assert checks["receptive field > 44"].value == "28 px"
    assert checks["global average pooling"].value == "F.avg_pool2d in forward"


# ---------------------------------------------------------------- (6) an op the RF cannot follow
class Upsampling(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 16, 3, padding=2, dilation=2)
        self.c3 = nn.Conv2d(16, 32, 3, padding=1)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.c1(x)), 2)
        x = F.relu(self.c2(x))
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        x = F.relu(self.c3(x))
        return self.fc(self.gap(x).flatten(1))


def test_untracked_op_makes_the_rf_unknown_not_wrong():
    # conv3 -> 3 | pool2: 4, jump 2 | conv3 d2: 4 + 2*2*2 = 12 | F.interpolate x2: an upsampling the
    # recurrence does not cover -> unknown from here on, whatever follows
    model = Upsampling()
    assert local_rfs(model) == [3, 4, 12, "?", "?", "all"]
    assert final_receptive_field(model) is None
    checks = verdicts(model)
    rf = checks["receptive field > 44"]
    assert rf.passed is None and rf.value.startswith("UNKNOWN (") and "F.interpolate" in rf.value
    assert (
        "[ ?? ] receptive field > 44       UNKNOWN (the RF cannot be followed past F.interpolate in"
        " forward, which changes the map size, 16x16 -> 32x32)"
        in format_rules(list(checks.values()))
    )
    # the rest is still known
    assert_verdicts(checks, rf=None, separable=False, dilated=True, gap=True)
    table = format_rf_table(receptive_field(model))
    assert "forward         F.interpolate        -  -  -  -     ?    ?  [16, 32, 32]" in table
    assert (
        "receptive field unknown: the RF cannot be followed past F.interpolate in forward" in table
    )


@pytest.mark.parametrize(
    "step",
    [
        lambda x: x[:, :, ::2, ::2],  # strided slicing of the spatial axes
        lambda x: F.pixel_shuffle(x.repeat(1, 4, 1, 1), 2),  # channels into space
        lambda x: torch.flip(x.softmax(dim=-1), [1]),  # softmax along the width mixes positions
        # attention
        lambda x: x.flatten(2).transpose(1, 2).bmm(x.flatten(2)).view(-1, 256, 16, 16)[:, :4],
    ],
)
def test_other_untracked_ops_are_unknown(step):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = (
                nn.Conv2d(3, 4, 3, padding=1, stride=2),
                nn.Conv2d(4, 8, 3, padding=1),
            )

        def forward(self, x):
            return self.c2(step(self.c1(x))).mean((2, 3))

    checks = verdicts(Net())
    assert checks["receptive field > 44"].passed is None
    assert checks["global average pooling"].passed is True


# ---------------------------------------------------------------- the seed network and the accuracy
# rule
def test_seed_network_all_pass():
    checks = verdicts(build_model("seed"), accuracy=83.61)
    assert all(c.passed is True for c in checks.values())
    assert checks["receptive field > 44"].value == "84 px"


def test_accuracy_rule():
    seed = build_model("seed")
    unknown = verdicts(seed)["test accuracy >= 80%"]
    assert unknown.passed is None and unknown.value == "UNKNOWN (not trained / not measured yet)"
    assert verdicts(seed, accuracy=83.61)["test accuracy >= 80%"].passed is True
    full = dict(test_images=10000)
    assert verdicts(seed, accuracy=83.61, **full)["test accuracy >= 80%"].value == "83.61%"
    assert verdicts(seed, accuracy=80)["test accuracy >= 80%"].passed is True
    low = verdicts(seed, accuracy=79.9, **full)["test accuracy >= 80%"]
    assert low.passed is False and low.value == "79.90%"
    text = format_rules(check_rules(seed, accuracy=79.9, test_images=10000))
    assert "[FAIL] test accuracy >= 80%       79.90%" in text
    assert (
        "[ ?? ] test accuracy >= 80%       UNKNOWN (not trained / not measured yet)"
        in format_rules(check_rules(seed))
    )


# ---------------------------------------------------------------- the model is left as it was
@pytest.mark.parametrize(
    "analyse", [check_rules, receptive_field, summary_text, final_receptive_field]
)
def test_analysis_leaves_the_model_unchanged(analyse):
    model = Eva4S7().double().train()
    model.conv2[3].eval()  # a mix of modes must survive too
    bn = model.conv1[1]
    bn.running_mean.fill_(0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = {n: m.training for n, m in model.named_modules()}
    rng = torch.get_rng_state()
    analyse(model)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert all(p.dtype == torch.float64 and p.device.type == "cpu" for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())
    if analyse is not summary_text:  # torchsummary draws its own random input, as it always did
        assert torch.equal(torch.get_rng_state(), rng)


def test_forward_failure_is_one_line():
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(10, 10))  # wrong Linear size
    for analyse in (check_rules, receptive_field, summary_text):
        with pytest.raises(CifarkitError) as err:
            analyse(net)
        msg = str(err.value)
        assert (
            "\n" not in msg
            and "forward pass fails on a (2, 3, 32, 32) input: RuntimeError: " in msg
        )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_analysis_of_a_gpu_model_leaves_it_on_the_gpu():
    model = build_model("seed").cuda().train()
    before = model.c1[0][2].running_mean.clone()
    assert verdicts(model)["receptive field > 44"].value == "84 px"
    assert all(p.is_cuda for p in model.parameters()) and model.training
    assert torch.equal(model.c1[0][2].running_mean, before)


# ================================================================ part 2: more idioms (issue 21)
class ReflectPadded(nn.Module):
    """Every conv pads by reflection / replication (Conv2d pads with F.pad first, even at padding
    0), and GAP is written as a sum divided by the number of positions."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1, padding_mode="reflect")
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16, padding_mode="reflect")
        self.pw = nn.Conv2d(16, 32, 1, padding_mode="reflect")
        self.dil = nn.Conv2d(32, 32, 3, padding=2, dilation=2, padding_mode="replicate")
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.c1(x)), 2)  # 32 -> 16
        x = F.relu(self.pw(F.relu(self.dw(x))))
        x = F.relu(self.dil(x))  # 16x16
        return self.fc(x.sum(dim=(2, 3)) / (x.shape[2] * x.shape[3]))


def test_reflect_and_replicate_padding_keep_the_pair_and_the_padding():
    # c1 3x3 -> 3 | maxpool2 -> 3 + 1*1 = 4, jump 2 | dw 3x3 -> 4 + 2*2 = 8 | pw 1x1 -> 8
    # dil 3x3 d2 -> 8 + 2*2*2 = 16 | sum / (16 * 16): an average over the whole 16x16 map, entering
    # RF 16
    model = ReflectPadded()
    assert local_rfs(model) == [3, 4, 8, 8, 16, "all"]
    checks = verdicts(model)
    assert_verdicts(checks, rf=False, separable=True, dilated=True, gap=True)
    assert checks["depthwise-separable conv"].value == "dw + pw"
    assert checks["global average pooling"].value == "x.sum in forward"
    rows = {r.name: r for r in receptive_field(model)}
    # what was padded
    assert rows["dw"].padding == 1 and rows["dil"].padding == 2 and rows["pw"].padding == 0


def conv_bn(cin, cout, k=3, s=1, d=1, g=1):
    """The helper most students write: conv -> BN -> ReLU as one nn.Sequential."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, s, padding=d * (k // 2), dilation=d, groups=g, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    )


def one_sequential():
    """The whole network as one nn.Sequential of helpers, a strided conv instead of a pool."""
    return nn.Sequential(
        conv_bn(3, 16),
        conv_bn(16, 32, s=2),
        conv_bn(32, 32, g=32),
        conv_bn(32, 64, k=1),
        conv_bn(64, 64, d=2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    )


def test_one_sequential_of_helpers_names_layers_by_path_and_class():
    # 0.0 3x3 -> 3 | 1.0 3x3 s2 -> 3 + 2*1 = 5, jump 2 | 2.0 depthwise 3x3 -> 5 + 2*2 = 9 | 3.0 1x1
    # -> 9 4.0 3x3 d2 -> 9 + 2*2*2 = 17 | 5 AdaptiveAvgPool2d(1) on 16x16: GAP, entering RF 17
    model = one_sequential()
    assert local_rfs(model) == [3, 5, 9, 9, 17, "all"]
    checks = verdicts(model)
    assert_verdicts(checks, rf=False, separable=True, dilated=True, gap=True)
    assert checks["depthwise-separable conv"].value == "2.0 (Conv2d) + 3.0 (Conv2d)"
    assert checks["dilated conv"].value == "4.0 (Conv2d) (dilation 2)"
    assert checks["global average pooling"].value == "5 (AdaptiveAvgPool2d)"
    assert checks["receptive field > 44"].value == "17 px"


class Bottleneck(nn.Module):
    """A residual block with a strided first conv and a strided 1x1 shortcut, added after the second
    BN."""

    def __init__(self, cin, cout):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, 2, 1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, 2, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNetLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.layer1, self.layer2 = Bottleneck(16, 32), Bottleneck(32, 64)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = self.layer2(self.layer1(F.relu(self.stem(x))))  # 32 -> 16 -> 8
        return self.fc(F.avg_pool2d(x, x.shape[-1]).flatten(1))


def test_residual_blocks_with_strided_shortcuts():
    # stem 3x3 -> 3, jump 1
    # layer1: conv1 3x3 s2 -> 3 + 2*1 = 5, jump 2 | conv2 3x3 -> 5 + 2*2 = 9 | shortcut 1x1 s2 -> 3,
    # jump 2
    #   add: both jump 2, largest RF 9
    # layer2: conv1 3x3 s2 -> 9 + 2*2 = 13, jump 4 | conv2 -> 13 + 2*4 = 21 | shortcut 1x1 s2 -> 9,
    # jump 4
    #   add -> 21 | F.avg_pool2d(x, 8) on 8x8: GAP, entering RF 21
    model = ResNetLike()
    assert local_rfs(model) == [3, 5, 9, 3, 13, 21, 9, "all"]
    checks = verdicts(model)
    assert_verdicts(checks, rf=False, separable=False, dilated=False, gap=True)
    assert checks["depthwise-separable conv"].value.startswith("none (no depthwise conv")
    assert checks["dilated conv"].value == "none (no conv with a kernel > 1 has dilation > 1)"
    assert checks["global average pooling"].value == "F.avg_pool2d in forward"


class NearMisses(nn.Module):
    """A depthwise conv followed by a 3x3 (not a 1x1), and a grouped conv that is not depthwise."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.c5 = nn.Conv2d(32, 32, 3, padding=1)
        self.g = nn.Conv2d(32, 64, 3, padding=1, groups=2)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = self.g(F.relu(self.c5(F.relu(self.dw(F.relu(self.stem(x)))))))
        return self.fc(x.mean(dim=[2, 3]))


def test_a_failed_separable_rule_says_which_layers_and_why():
    # stem -> 3 | dw 3x3 -> 5 | c5 3x3 -> 7 | g 3x3 -> 9 | mean over H, W: GAP entering 9
    model = NearMisses()
    assert local_rfs(model) == [3, 5, 7, 9, "all"]
    checks = verdicts(model)
    assert_verdicts(checks, rf=False, separable=False, dilated=False, gap=True)
    value = checks["depthwise-separable conv"].value
    assert (
        value == "none (dw is followed by c5, a 3x3 conv, not a 1x1; g has groups=2 of 32 channels:"
        " grouped, not depthwise (depthwise needs groups = channels = 32))"
    )
    assert "\n" not in format_rules(list(checks.values())).split("\n")[2]


class TwoStepSum(nn.Module):
    """GAP written as two sums and a multiplication by 1 / (H * W), after two pools."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.c1(x)), 2)  # 16x16
        x = F.max_pool2d(F.relu(self.c2(x)), 2)  # 8x8
        return self.fc(x.sum(-1).sum(-1) * (1.0 / 64))


def test_sum_then_scale_by_one_over_hw_is_an_average():
    # c1 3x3 -> 3 | pool2 -> 4, jump 2 | c2 3x3 -> 4 + 2*2 = 8 | pool2 -> 8 + 1*2 = 10, jump 4
    # sum over W, then over H, times 1/64 on an 8x8 map: an average, entering RF 10
    model = TwoStepSum()
    assert local_rfs(model) == [3, 4, 8, 10, "all"]
    checks = verdicts(model)
    assert_verdicts(checks, rf=False, separable=False, dilated=False, gap=True)


class WrongDivisor(nn.Module):
    """A sum over the map divided by the number of CHANNELS: still a sum pool, scaled."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 10, 3, padding=1)

    def forward(self, x):
        return self.c1(x).sum(dim=(2, 3)) / 10


def test_a_sum_divided_by_something_else_is_not_an_average():
    # c1 3x3 -> 3 | sum over 32x32, / 10 (the channels, not the 1,024 positions): a scaled sum
    model = WrongDivisor()
    assert local_rfs(model) == [3, "all"]
    checks = verdicts(model)
    assert_verdicts(checks, rf=False, separable=False, dilated=False, gap=False)
    assert (
        checks["global average pooling"].value
        == "none (x.sum in forward is a global sum pool, not an average)"
    )


def test_a_squeezed_global_pool_keeps_the_receptive_field():
    """`gap(x).squeeze(-1).squeeze(-1)` into the head is a global pool, not a map rebuilt from
    flattened features: the receptive field is followed, not UNKNOWN."""
    import torch.nn.functional as F

    class Squeezes(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(3, 16, 3, padding=1)
            self.c2 = nn.Conv2d(16, 16, 3, padding=2, dilation=2, groups=16)
            self.pw = nn.Conv2d(16, 32, 1)
            self.gap = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(32, 10)

        def forward(self, x):
            x = F.max_pool2d(F.relu(self.c1(x)), 2)
            x = F.max_pool2d(F.relu(self.pw(self.c2(x))), 4)
            return self.fc(self.gap(x).squeeze(-1).squeeze(-1))

    rules = check_rules(Squeezes())
    rf = next(r for r in rules if r.rule.startswith("receptive field"))
    assert rf.passed is not None and "UNKNOWN" not in rf.value, rf.value


@pytest.mark.parametrize(
    "accuracy, needle", [(0.85, "a fraction?"), (150, "got 150"), ("85", "'85'")]
)
def test_an_accuracy_that_is_no_percentage_is_one_line(accuracy, needle):
    from cifarkit.base import ConfigError

    with pytest.raises(ConfigError) as e:
        check_rules(nn.Conv2d(3, 10, 3), accuracy=accuracy)
    assert "accuracy is the test accuracy in percent" in str(e.value) and needle in str(e.value)
    rules = check_rules(
        nn.Sequential(nn.Conv2d(3, 10, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()), accuracy=85.0
    )
    assert "taken as measured on all 10,000 test images" in str(rules)


def test_a_forward_that_fails_in_the_rule_check_names_the_students_line():
    from cifarkit.analysis.tracer import AnalysisError

    class Buggy(nn.Module):
        def __init__(self):
            super().__init__()
            self.c, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(16, 10)

        def forward(self, x):
            return self.fc(self.c(x).mean((2, 3)))  # 8 features into a 16-input layer

    with pytest.raises(AnalysisError) as e:
        check_rules(Buggy())
    assert "mat1 and mat2" in str(e.value) and "test_rules_networks.py, line" in str(e.value)
    assert "return self.fc(self.c(x).mean((2, 3)))" in str(e.value) and "\n" not in str(e.value)
