"""speed: the measured seconds per epoch by device kind, the estimate the notebook prints, and
docs/speed.md."""

from pathlib import Path

import torch

from cifarkit import speed
from cifarkit.speed import MEASURED, Measured, epoch_estimate


def test_every_measurement_names_its_source_and_is_in_the_docs():
    table = (Path(__file__).resolve().parents[1] / "docs" / "speed.md").read_text()
    assert len({(m.kind, m.path, m.device) for m in MEASURED}) == len(MEASURED)
    for m in MEASURED:
        assert (
            m.seconds > 0 and m.source and m.device in table and f"| {m.seconds:.1f} |" in table
        ), m


def test_the_estimate_for_a_measured_and_an_unmeasured_device(monkeypatch):
    monkeypatch.setattr(
        speed, "MEASURED", (Measured("cpu:TESTKIND", 50.0, "test CPU", "fp32", "a test"),)
    )
    monkeypatch.setattr(speed, "cpu_kind", lambda: "TESTKIND")
    cpu = torch.device("cpu")
    line = epoch_estimate(cpu, 20, threads=2)
    assert (
        line == "time per epoch: about 50 s on a test CPU in fp32, so 20 epochs take about 17 min; "
        "source: a test"
    )
    assert "measured with 2 threads, this process has 8" in epoch_estimate(cpu, 20, threads=8)
    assert "yours may differ" in epoch_estimate(cpu, 1, model="mine.py:Net", threads=2)
    assert "so 1 epoch takes about 50 s;" in epoch_estimate(cpu, 1, threads=2)
    assert "yours may differ" in epoch_estimate(cpu, 1, model=torch.nn.Linear, threads=2)
    # an epoch of far fewer images: the figures are said not to apply, and no total is made up
    short = epoch_estimate(cpu, 1, threads=2, train_images=1024)
    assert "this run trains on 1,024 images per epoch, so those figures do not apply" in short
    assert "take" not in short and "about" not in short
    assert "take about 17 min" in epoch_estimate(cpu, 20, threads=2, train_images=49_000)
    # another path on a measured device borrows no number
    assert "not measured on this device with cuda_graphs" in epoch_estimate(
        cpu, 20, path="cuda_graphs"
    )
    monkeypatch.setattr(speed, "cpu_kind", lambda: "OTHER")
    assert epoch_estimate(cpu, 20).startswith(
        "time per epoch: not measured on this device (cpu:OTHER)"
    )


def test_two_machines_of_one_kind_give_a_range_each_named_and_the_report_compares_with_each(
    monkeypatch,
):
    monkeypatch.setattr(
        speed,
        "MEASURED",
        (
            Measured("cpu:TESTKIND", 40.0, "slow CPU", "bf16", "run A"),
            Measured("cpu:TESTKIND", 20.0, "fast CPU", "bf16", "run B"),
        ),
    )
    monkeypatch.setattr(speed, "cpu_kind", lambda: "TESTKIND")
    cpu = torch.device("cpu")
    line = epoch_estimate(cpu, 20, threads=2)
    assert line.startswith("time per epoch: 20-40 s on this kind of device (cpu:TESTKIND)")
    assert "20 s on a fast CPU in bf16, 40 s on a slow CPU in bf16" in line
    assert "20 epochs take about 7-13 min" in line and line.endswith(
        "sources (docs/speed.md): run B, run A"
    )
    history = [{"train_seconds": 28.0, "eval_seconds": 2.0, "images_per_second": 50000 / 28.0}] * 3
    report = speed.timing_report(history, {"wall_seconds": 95.0, "hardware": "CPU: test"}, cpu)
    assert report.endswith(
        "against each: 20.0 s per epoch (fast CPU), 1.50x; 40.0 s per epoch (slow CPU), 0.75x"
    )
