"""Every registered network: shapes, finite outputs, a gradient on every parameter; the seed network
exactly."""

import re
from pathlib import Path

import pytest
import torch

from cifarkit.analysis.rules import check_rules
from cifarkit.analysis.summary import summary_text
from cifarkit.base import ConfigError
from cifarkit.models import MODELS, build_model, count_parameters

REFERENCE = (
    Path(__file__).resolve().parents[1]
    / ".."
    / "shared"
    / "reference"
    / "seed-assignment7-readme.md"
)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_forward_shape_and_finite(name):
    torch.manual_seed(0)
    model = build_model(name)
    out = model(torch.randn(4, 3, 32, 32))
    assert out.shape == (4, 10)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    model = build_model(name)
    model(torch.randn(4, 3, 32, 32)).logsumexp(1).sum().backward()
    for pname, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"{pname} got no gradient"
            assert torch.isfinite(p.grad).all(), f"{pname} has a non-finite gradient"
            assert p.grad.abs().sum() > 0, f"{pname} has an all-zero gradient"


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_network_keeps_the_course_rules(name):
    failed = [c for c in check_rules(build_model(name)) if c.passed is False]
    assert not failed, failed


@pytest.mark.parametrize("name", sorted(MODELS))
def test_channels_last_bf16_matches_fp32(name):
    """The fast path (channels_last + bf16 autocast) computes the same function up to bf16
    rounding."""
    torch.manual_seed(0)
    model = build_model(name).eval()
    x = torch.randn(8, 3, 32, 32)
    ref = model(x)
    fast = model.to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fast(x.contiguous(memory_format=torch.channels_last)).float()
    assert (out - ref).abs().max() < 0.1 * ref.abs().max() + 0.05


def test_unknown_model_name_lists_known_ones():
    with pytest.raises(ConfigError, match="unknown model 'nope'; known: .*seed"):
        build_model("nope")


def test_seed_parameter_count():
    assert count_parameters(build_model("seed")) == 467_098


@pytest.mark.skipif(not REFERENCE.exists(), reason="reference write-up not available")
def test_seed_summary_is_the_seed_table_row_for_row():
    """torchsummary prints exactly the table of the original write-up (from the header row on)."""
    text = REFERENCE.read_text()
    ref = (
        re.search(r"```\n(\s+Layer \(type\).*?)```", text, re.S).group(1).rstrip("\n").splitlines()
    )
    got = summary_text(build_model("seed")).rstrip("\n").splitlines()
    start = next(i for i, line in enumerate(got) if "Layer (type)" in line)
    assert got[start:] == ref


def test_seed_dropout_is_configurable():
    model = build_model("seed", dropout=0.25)
    rates = {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)}
    assert rates == {0.25}


def test_compact_whitening_decorrelates_patches():
    """After init_from_data the 2x2x3 patches come out of the whitening conv decorrelated, with unit
    variance (eps = 5e-4 shrinks the weakest directions slightly: variance lambda / (lambda +
    eps))."""
    from cifarkit.data.loader import normalize

    g = torch.Generator().manual_seed(0)
    # correlated pixels
    smooth = torch.nn.functional.avg_pool2d(torch.rand(64, 3, 35, 35, generator=g), 4, 1)
    x = normalize((smooth * 255).to(torch.uint8))
    model = build_model("compact")
    model.init_from_data(x)
    out = model.whiten(x) - model.whiten.bias.view(1, -1, 1, 1)
    feats = out[:, :12].permute(0, 2, 3, 1).reshape(-1, 12)
    cov = feats.T @ feats / len(feats)
    off = cov - torch.diag(cov.diag())
    assert off.abs().max() < 0.01  # decorrelated
    # unit variance, up to the eps shrinkage
    assert ((cov.diag() > 0.8) & (cov.diag() < 1.01)).all()
    assert torch.allclose(out[:, 12:], -out[:, :12], atol=1e-5)


def test_frozen_parameters_count_towards_the_size():
    model = build_model("compact")
    assert count_parameters(model) == 586_328
    assert count_parameters(model, trainable_only=True) < count_parameters(model)
