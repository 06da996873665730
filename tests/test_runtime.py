"""runtime.decide: one decision of device, precision, layout and determinism, a candidate used only
where the network runs in it, and a record every reader takes. The CUDA branches run without a GPU:
the card's compute capability is faked, and each candidate is tried for real on the CPU (fp16 and
bf16 autocast both stand in as CPU bf16), so the networks' own failures decide, as on a GPU."""

import pytest
import torch
from torch import nn

from cifarkit import runtime
from cifarkit.data.loader import DeviceLoader
from cifarkit.models import build_model
from cifarkit.models.check import NetworkError
from cifarkit.runtime import Runtime, apply_determinism, decide

from conftest import DEVICES

X = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))


class FlattensWithView(nn.Module):
    """A course-style head: `.view` flattens a spatial map into a Linear (fails on NHWC maps)."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 8, 3, padding=1)
        self.pool = nn.MaxPool2d(8)
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        x = self.pool(torch.relu(self.c(x)))  # (N, 8, 4, 4)
        return self.fc(x.view(-1, 8 * 4 * 4))


class NotFiniteUnderAutocast(nn.Module):
    """Finite in fp32, not under bf16 / fp16 autocast (an overflow a student's network can have)."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 10, 3, padding=1)

    def forward(self, x):
        y = self.c(x).mean((2, 3))
        return y * float("inf") if torch.is_autocast_enabled("cpu") else y


class NeedsOtherInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(7, 10)

    def forward(self, x):
        return self.fc(x)


@pytest.fixture
def fake_cuda(monkeypatch):
    """card(major, minor): decide() on "cuda" as on a card of that compute capability."""
    real_try = runtime.try_candidate

    def on_cpu(model, x, device, dtype, nhwc):
        return real_try(model, x, torch.device("cpu"), dtype and torch.bfloat16, nhwc)

    monkeypatch.setattr(runtime, "try_candidate", on_cpu)
    monkeypatch.setattr(runtime, "hardware_string", lambda d: "GPU: a fake card")
    monkeypatch.setattr(runtime, "apply_determinism", lambda d, on: (on, "on (faked)"))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "Fake card")

    def card(major: int, minor: int = 0):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (major, minor))

    return card


def cuda_decision(model, precision="auto", layout="auto", kept=None) -> Runtime:
    return decide(torch.device("cuda"), precision, layout, True, model, X, kept=kept)


def test_cuda_prefers_nhwc_under_bf16_but_only_where_the_network_runs_in_it(fake_cuda):
    fake_cuda(9, 0)  # an H100 / H200
    seed = cuda_decision(build_model("seed"))
    assert (seed.precision, seed.channels_last) == ("bf16", True)
    assert "tensor-core" in seed.reasons["layout"]
    view = cuda_decision(FlattensWithView())
    assert (view.precision, view.channels_last) == ("bf16", False)
    why = view.reasons["layout"]
    assert why.startswith("NCHW: your network fails in channels_last (RuntimeError: view size")
    assert "test_runtime.py, line" in why and "x.view(-1, 8 * 4 * 4)" in why  # its own line


def test_a_t4_trains_in_fp16_and_a_network_not_finite_there_in_fp32_nchw(fake_cuda):
    fake_cuda(7, 5)  # a T4: fp16 with a gradient scaler first
    assert cuda_decision(build_model("seed")).precision == "fp16"
    r = cuda_decision(NotFiniteUnderAutocast())
    assert (r.precision, r.channels_last) == ("fp32", False)
    assert r.reasons["precision"].startswith("fp32: your network fails in fp16: ")
    assert "its output is not finite" in r.reasons["precision"]


def test_an_explicit_setting_is_the_one_candidate_and_its_failure_the_error(fake_cuda):
    fake_cuda(8, 0)
    with pytest.raises(NetworkError) as e:
        cuda_decision(FlattensWithView(), layout="yes")
    assert "\n" not in str(e.value) and "view size is not compatible" in str(e.value)
    r = cuda_decision(FlattensWithView(), precision="fp32", layout="no")
    assert (r.precision, r.channels_last) == ("fp32", False) and "requested" in r.reasons["layout"]


def test_a_network_that_fails_everywhere_is_refused_naming_its_own_line(fake_cuda):
    fake_cuda(8, 0)
    with pytest.raises(NetworkError) as e:
        cuda_decision(NeedsOtherInput())
    assert "mat1 and mat2 shapes cannot be multiplied" in str(e.value)
    assert "\n" not in str(e.value)


def test_a_resumed_runs_record_is_its_only_candidate(fake_cuda, capsys):
    fake_cuda(9, 0)
    kept = {"device": "cpu", "precision": "fp32", "channels_last": True, "deterministic": True}
    r = cuda_decision(build_model("seed"), kept=kept)
    assert (r.precision, r.channels_last, r.deterministic) == ("fp32", True, True)
    assert "as the run chose when it started" in r.reasons["precision"]
    assert "as the run chose when it started" in r.reasons["layout"]
    # another device type than the run started on: said in one line
    assert "the run started on cpu" in r.reasons["device"] and "\n" not in r.reasons["device"]


def test_on_a_cpu_the_same_rules_hold_for_real(tmp_path, monkeypatch):
    monkeypatch.setenv("CIFARKIT_LAYOUT_CACHE", str(tmp_path / "layout.json"))
    cpu = torch.device("cpu")
    r = decide(cpu, "fp32", "auto", True, FlattensWithView(), X)
    assert (r.precision, r.channels_last) == ("fp32", False)
    assert "your network fails in channels_last" in r.reasons["layout"]
    with pytest.raises(NetworkError, match="view size is not compatible"):
        decide(cpu, "fp32", "yes", True, FlattensWithView(), X)
    r = decide(cpu, "bf16", "no", False, build_model("seed"), X)
    assert (r.precision, r.channels_last, r.deterministic) == ("bf16", False, False)


def test_the_record_round_trips_and_older_records_are_read():
    r = Runtime("cuda:0", "bf16", True, True, "GPU: x", {"precision": "bf16: why"})
    assert Runtime.from_dict(r.to_dict()) == r and r.amp_dtype is torch.bfloat16
    old = Runtime.from_dict({"precision": "bfloat16", "channels_last": False})
    assert (old.precision, old.channels_last, old.device, old.deterministic) == (
        "bf16",
        False,
        "cpu",
        False,
    )
    assert [line.split(":")[0] for line in r.lines()] == [
        "device",
        "precision",
        "layout",
        "determinism",
    ]


def test_determinism_sets_cudnn_and_is_undone_by_off():
    before = (
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
        torch.are_deterministic_algorithms_enabled(),
    )
    try:
        on, why = apply_determinism(torch.device("cuda"), True)
        assert on and torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert torch.are_deterministic_algorithms_enabled() and why.startswith("on: cuDNN")
        off, why = apply_determinism(torch.device("cuda"), False)
        assert not off and not torch.backends.cudnn.deterministic and torch.backends.cudnn.benchmark
        assert not torch.are_deterministic_algorithms_enabled()
        assert apply_determinism(torch.device("cpu"), True)[0] is True
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[:2]
        torch.use_deterministic_algorithms(before[2])


@pytest.mark.parametrize("flip", ["alternate", "random"])
def test_the_data_order_and_augmentation_do_not_depend_on_the_device(device, flip):
    images = torch.randint(0, 256, (300, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(300) % 10

    def draws(dev):
        loader = DeviceLoader(
            images, labels, 50, train=True, device=dev, flip=flip, cutout=8, seed=3
        )
        order, p = loader.epoch_draws(1)
        return order.cpu(), {k: v.cpu() for k, v in p.items()}

    (order, p), (order_cpu, p_cpu) = draws(device), draws("cpu")
    assert torch.equal(order, order_cpu) and p.keys() == p_cpu.keys()
    assert all(torch.equal(p[k], p_cpu[k]) for k in p)
    assert len(DEVICES) >= 1
