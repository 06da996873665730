"""hardware: precision and memory layout chosen per machine, each with its reason; the layout
probe."""

import dataclasses
import json
import platform
import sys

import pytest
import torch
from torch import nn

from cifarkit import hardware
from cifarkit.base import ConfigError
from cifarkit.config import TrainConfig
from cifarkit.hardware import choose_channels_last, hardware_string, model_is_nhwc
from cifarkit.models import build_model

CPU = torch.device("cpu")


def test_explicit_layouts_and_old_bools_are_honoured():
    assert choose_channels_last("yes", CPU, None) == (True, "channels_last (requested)")
    assert choose_channels_last("no", CPU, None) == (False, "NCHW (requested)")
    # saved when it was a bool
    assert TrainConfig.from_dict({"channels_last": True}).channels_last == "yes"
    assert TrainConfig.from_dict({"channels_last": False, "flip": True}).flip == "random"
    # only saved configs are translated
    with pytest.raises(ConfigError, match="channels_last must be a string, got bool True"):
        TrainConfig(channels_last=True)
    with pytest.raises(ConfigError, match="channels_last must be one of auto, yes, no"):
        TrainConfig(channels_last="maybe")


def test_cuda_rule_follows_the_precision():
    cuda = torch.device("cuda")  # the rule needs no GPU: it reads only the autocast dtype
    assert choose_channels_last("auto", cuda, torch.bfloat16)[0] is True
    assert choose_channels_last("auto", cuda, torch.float16)[0] is True
    assert choose_channels_last("auto", cuda, None)[0] is False


def test_cpu_auto_measures_picks_the_faster_and_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("CIFARKIT_LAYOUT_CACHE", str(tmp_path / "layout.json"))
    calls = []
    for nchw, nhwc, want in ((300.0, 200.0, False), (200.0, 300.0, True)):
        monkeypatch.setattr(
            hardware, "_time_layouts", lambda *a, r=(nchw, nhwc): calls.append(1) or r
        )
        # another network: another cache entry
        model = nn.Sequential(nn.Conv2d(3, 4 + len(calls), 3))
        use, why = choose_channels_last("auto", CPU, None, model=model)
        assert use is want and "measured now" in why and "300 vs 200 img/s" in why
        use2, why2 = choose_channels_last("auto", CPU, None, model=model)
        assert use2 is want and "measured earlier" in why2
    assert len(calls) == 2  # the second look-up of each network came from the cache file
    assert len(json.loads((tmp_path / "layout.json").read_text())) == 2


def test_a_real_probe_times_both_layouts_and_leaves_the_model_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("CIFARKIT_LAYOUT_CACHE", str(tmp_path / "layout.json"))
    model = build_model("seed")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = torch.get_rng_state()
    nchw, nhwc = hardware._time_layouts(model, CPU, None, 8)
    assert nchw > 0 and nhwc > 0
    assert torch.equal(torch.get_rng_state(), state)  # the run's random stream is untouched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model_is_nhwc(model)


def test_a_network_that_fails_in_both_layouts_is_reported_as_its_own_error(tmp_path, monkeypatch):
    monkeypatch.setenv("CIFARKIT_LAYOUT_CACHE", str(tmp_path / "layout.json"))

    class NeedsOtherInput(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(7, 10)

        def forward(self, x):
            return self.fc(x)

    use, why = choose_channels_last("auto", CPU, None, model=NeedsOtherInput())
    assert (
        use is False
        and "fails in both layouts: RuntimeError: mat1 and mat2 shapes cannot be multiplied" in why
    )
    assert "test_hardware.py, line " in why and "return self.fc(x)" in why  # the network's own line
    assert not (tmp_path / "layout.json").exists()  # a failure is not a measurement: nothing kept


class ViewHead(nn.Module):
    """Correct in NCHW; its .view needs a contiguous tensor, so it fails on channels_last
    activations."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 32 * 32, 10)

    def forward(self, x):
        return self.fc(self.c(x).view(len(x), -1))


class InfInNHWC(nn.Module):
    """Finite in NCHW, not in NHWC (as a layout-dependent kernel bug would be)."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 10, 3, padding=1)

    def forward(self, x):
        y = self.c(x).mean((2, 3))
        return (
            y * float("inf")
            if x.is_contiguous(memory_format=torch.channels_last)
            and x.shape[1] > 1
            and not x.is_contiguous()
            else y
        )


@pytest.mark.parametrize(
    "net, needle",
    [
        (ViewHead, "RuntimeError: view size is not compatible"),
        (InfInNHWC, "its output is not finite"),
    ],
)
def test_the_layout_is_chosen_among_those_the_network_runs_correctly(
    tmp_path, monkeypatch, net, needle
):
    monkeypatch.setenv("CIFARKIT_LAYOUT_CACHE", str(tmp_path / "layout.json"))
    use, why = choose_channels_last("auto", CPU, None, model=net())
    assert (
        use is False
        and why.startswith("NCHW: your network fails in channels_last (")
        and needle in why
    ), why
    assert why.endswith(", so NCHW")


def test_model_is_nhwc_and_the_cpu_description():
    m = build_model("seed")
    assert not model_is_nhwc(m) and model_is_nhwc(m.to(memory_format=torch.channels_last))
    text = hardware_string(CPU)
    assert text.startswith("CPU: ") and f"{torch.get_num_threads()} threads" in text
    assert hardware.cpu_kind() in text


# ---------------------------------------------------------------- CPU memory kept for reuse
GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_large_cpu_tensors_reuse_freed_memory_instead_of_page_faulting():
    """With glibc's defaults every tensor over 32 MiB is a fresh mmap, unmapped on free: a 60 MiB
    one costs 15,360 page faults each time. After `keep_freed_memory` it is carved out of the
    64 MiB freed just before, with (almost) nothing faulted in."""
    import resource

    assert "kept for reuse" in hardware.keep_freed_memory(torch.device("cpu"))

    def faults_of(mib: int) -> int:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t = torch.ones(mib * 2**18)  # float32, every page written
        after = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        del t
        return after - before

    faults_of(64)  # the heap grows by 64 MiB, freed again
    assert faults_of(60) < 1000


def test_keep_freed_memory_is_for_cpus_only_and_fit_says_it(tmp_path, learnable_data, capsys):
    from cifarkit.training.trainer import fit

    assert hardware.keep_freed_memory(torch.device("meta")) is None
    cfg = TrainConfig(
        epochs=1, batch_size=100, precision="fp32", progress=False, tta="none", device="cpu"
    )
    fit(dataclasses.replace(cfg, out=str(tmp_path / "run")), data=learnable_data)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("memory: ")]
    assert len(lines) == (1 if GLIBC else 0), lines


@pytest.mark.parametrize("stored", [[None, None], ["fast", "slow"], [0.0, 5.0], [1.0], {"a": 1}])
def test_a_layout_cache_entry_that_is_no_measurement_is_measured_again(
    tmp_path, monkeypatch, stored
):
    cache = tmp_path / "layout.json"
    monkeypatch.setenv("CIFARKIT_LAYOUT_CACHE", str(cache))
    calls = []
    monkeypatch.setattr(hardware, "_time_layouts", lambda *a: calls.append(1) or (300.0, 200.0))
    model = nn.Sequential(nn.Conv2d(3, 4, 3))
    choose_channels_last("auto", CPU, None, model=model)
    entries = json.loads(cache.read_text())
    cache.write_text(json.dumps({k: stored for k in entries}))
    use, why = choose_channels_last("auto", CPU, None, model=model)
    assert len(calls) == 2 and use is False and "measured now" in why
    assert list(json.loads(cache.read_text()).values()) == [[300.0, 200.0]]  # the bad entry is gone
