"""Grad-CAM: maps of the right shape and range that follow the evidence, any network, no side
effects."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

from cifarkit.analysis.gradcam import (
    find_target_layer,
    gradcam,
    gradcam_misclassified,
)
from cifarkit.analysis.gradcamplot import plot_gradcam
from cifarkit.base import CLASSES, ConfigError
from cifarkit.data.loader import normalize
from cifarkit.models.seed import SeedNet


class LeftEyed(nn.Module):
    """Sees only the left half of the image (the right half is zeroed in forward); bias-free convs
    keep the right half of every feature map at zero, apart from the columns next to the seam."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            OrderedDict(
                stem=nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.ReLU()),
                last=nn.Conv2d(8, 8, 3, padding=1, bias=False),
            )
        )
        self.head = nn.Sequential(
            nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)
        )

    def forward(self, x):
        x = x * (torch.arange(x.shape[3], device=x.device) < x.shape[3] // 2)
        return self.head(self.features(x))


class Scrambled(nn.Module):
    """Modules registered in a different order than they run, and a final conv on a 1x1 map."""

    def __init__(self):
        super().__init__()
        self.zz_late = nn.Conv2d(8, 8, 3, padding=1)
        self.aa_early = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Conv2d(8, 10, 1)  # a "fully convolutional" head: 1x1 spatial output

    def forward(self, x):
        return self.classifier(self.pool(self.zz_late(self.aa_early(x)))).flatten(1)


def images(n=6, seed=0):
    return torch.randint(
        0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
    )


def test_maps_shape_range_and_follow_the_evidence():
    torch.manual_seed(0)
    model = LeftEyed().eval()
    x = images(8)
    cams = gradcam(model, x, list(range(8)))
    assert cams.shape == (8, 32, 32) and cams.dtype == torch.float32
    assert cams.min() >= 0 and cams.max() <= 1
    nonzero = cams.flatten(1).sum(1) > 0
    assert nonzero.sum() >= 4, "most classes should have some positive evidence"
    left = cams[nonzero, :, :16].flatten(1).sum(1) / cams[nonzero].flatten(1).sum(1)
    assert (left > 0.9).all(), left


def test_uint8_and_normalised_inputs_give_the_same_maps():
    torch.manual_seed(0)
    model = LeftEyed().eval()
    x = images(3)
    a = gradcam(model, x, [1, 2, 3])
    b = gradcam(model, normalize(x), torch.tensor([1, 2, 3]))
    assert torch.allclose(a, b, atol=1e-5)
    assert gradcam(model, x, 4).shape == (3, 32, 32)  # one class for all


def test_default_layer_is_the_last_conv_with_spatial_output_in_execution_order():
    assert find_target_layer(Scrambled(), images(1)) == "zz_late"
    # the pointwise conv of the separable conv
    assert find_target_layer(SeedNet(), images(1)) == "c4.1.1"
    assert find_target_layer(LeftEyed(), images(1)) == "features.last"
    # any module with a (N, C, H, W) output
    assert find_target_layer(SeedNet(), images(1), "c3") == "c3"


@pytest.mark.parametrize(
    "name, message", [("c9.0", "unknown target_layer 'c9.0'"), ("fc", "outputs shape (2, 10)")]
)
def test_bad_layer_is_one_line_listing_conv_layers(name, message):
    with pytest.raises(ConfigError) as e:
        gradcam(SeedNet(), images(2), [0, 1], target_layer=name)
    text = str(e.value)
    assert "\n" not in text and message in text and "c4.1.1" in text


def test_bad_targets_are_one_line():
    with pytest.raises(ConfigError, match="3 targets for 2 images"):
        gradcam(SeedNet(), images(2), [0, 1, 2])
    with pytest.raises(ConfigError, match="out of range"):
        gradcam(SeedNet(), images(2), [0, 10])


def test_model_state_is_unchanged():
    torch.manual_seed(0)
    model = SeedNet()
    model.train()
    model(normalize(images(16)))  # non-trivial BatchNorm statistics
    model.c1[0][0].weight.requires_grad_(False)  # a frozen layer stays frozen
    grad = torch.ones_like(model.fc.weight)
    model.fc.weight.grad = grad
    model.c4.eval()  # a mixed train / eval state survives too
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    flags = [p.requires_grad for p in model.parameters()]
    cams = gradcam(model, images(2), [0, 1], precision="bf16")
    assert cams.shape == (2, 32, 32)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == flags
    assert model.fc.weight.grad is grad and model.c2[0][0].weight.grad is None
    assert not any(m._forward_hooks for m in model.modules())  # the library's hooks are released


def test_bf16_maps_agree_with_fp32_and_inference_mode_is_fine():
    torch.manual_seed(0)
    model = LeftEyed().eval()
    x = images(4)
    fp32 = gradcam(model, x, [0, 1, 2, 3])
    # e.g. called right after predict(): Grad-CAM still gets its gradients
    with torch.inference_mode():
        bf16 = gradcam(model, x, [0, 1, 2, 3], precision="bf16")
    assert torch.corrcoef(torch.stack([fp32.flatten(), bf16.flatten()]))[0, 1] > 0.9


def test_frozen_network_still_gets_maps():
    torch.manual_seed(0)
    model = LeftEyed().eval().requires_grad_(False)
    assert gradcam(model, images(2), [0, 1]).shape == (2, 32, 32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_maps_match_cpu():
    """fp32 on both: the maps agree to 2e-3 (of a map scaled to 1), once the GPU computes in true
    fp32. By default cuDNN convolutions run in TF32 (10 mantissa bits: a relative error of ~5e-4 per
    product, compounded over 9 layers forward and back), which is why the first GPU run of this test
    (2026-12-04, H200) saw differences of ~5e-3; with TF32 the maps agree to 2e-2, and their
    correlation stays above 0.999."""
    torch.manual_seed(0)
    model = SeedNet().eval()
    x = images(4)
    cpu = gradcam(model, x, [0, 1, 2, 3])
    tf32 = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    try:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        gpu = gradcam(model.cuda(), x, [0, 1, 2, 3])
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
        gpu_tf32 = gradcam(model, x, [0, 1, 2, 3])
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    assert gpu.device.type == "cpu" and next(model.parameters()).is_cuda
    assert torch.allclose(cpu, gpu, atol=2e-3)
    assert torch.allclose(cpu, gpu_tf32, atol=2e-2)
    assert torch.corrcoef(torch.stack([cpu.flatten(), gpu_tf32.flatten()]))[0, 1] > 0.999
    assert gradcam(model, x, [0, 1, 2, 3], precision="auto").shape == (4, 32, 32)


def test_plot_gradcam_writes_png(tmp_path):
    torch.manual_seed(0)
    model = LeftEyed().eval()
    x, labels = images(10), torch.arange(10)
    probs = torch.softmax(torch.randn(10, 10), 1)
    idx = torch.tensor([1, 4, 7])
    cams = gradcam(model, x[idx], labels[idx])
    fig = plot_gradcam(x, labels, probs, idx, cams, cams, CLASSES, path=tmp_path / "g.png", ncols=2)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    # per image: the image itself (its class), the predicted class's map, the true class's map
    assert len(titles) == 9 and titles[0] == CLASSES[1] and titles[2] == f"true: {CLASSES[1]}"
    assert (
        titles[1].startswith("pred: ")
        and titles[1].endswith("%")
        and (tmp_path / "g.png").stat().st_size > 0
    )
    assert any(ax.get_label() == "<colorbar>" for ax in fig.axes)  # one colour scale for all maps
    fig = gradcam_misclassified(model, x, labels, probs, idx, CLASSES, path=tmp_path / "m.png")
    title = fig._suptitle.get_text()
    assert (
        "features.last (" in title
        and "Conv2d" in title
        and "output " in title
        and (tmp_path / "m.png").exists()
    )


class Block(nn.Module):
    """conv -> BN -> ReLU -> conv -> BN, plus the input (identity shortcut), then ReLU."""

    def __init__(self, c):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        return torch.relu(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))) + x)


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.layer1 = nn.Sequential(Block(16), Block(16))
        self.pool = nn.MaxPool2d(4)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.pool(self.layer1(torch.relu(self.stem(x))))  # 32x32 -> 8x8
        return self.fc(x.mean((2, 3)))


def test_the_default_layer_of_a_residual_network_is_the_block_output_after_the_sum():
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    net = Residual()
    # The last conv, layer1.1.conv2, sees only the residual branch: the sum with the shortcut comes
    # after it, inside layer1.1's forward; Grad-CAM reads that block's output (the sum, after its
    # ReLU).
    assert find_target_layer(net, images) == "layer1.1"
    assert gradcam(net, images, [1, 2]).shape == (2, 32, 32)
    assert find_target_layer(SeedNet(), images) == "c4.1.1"  # no shortcut: the last conv itself


def test_a_layer_with_a_1x1_output_is_refused_in_one_line():
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Conv2d(8, 10, 1), nn.Flatten()
    )
    with pytest.raises(ConfigError) as e:
        gradcam(net, torch.zeros(2, 3, 32, 32, dtype=torch.uint8), 0, target_layer="2")
    assert "outputs a 1x1 map" in str(e.value) and "\n" not in str(e.value)
