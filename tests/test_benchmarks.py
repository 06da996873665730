"""The pure parts of the benchmark scripts: the validation sweep's variants, scoring and table."""

import importlib.util
import json
from pathlib import Path

import pytest

from cifarkit.cli import build_parser, config_from_args
from cifarkit.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sweep = load_script("val_sweep")


@pytest.mark.parametrize(
    "variant",
    [(s, n, o) for s, rows in sweep.SETS.items() for n, o in rows],
    ids=lambda v: f"{v[0]}:{v[1]}",
)
def test_every_variant_is_a_valid_train_command(variant):
    _, _, opts = variant
    # ConfigError if bad
    config_from_args(build_parser().parse_args(["train", *opts, "--val-split", "5000"]))


def test_seed_net_default_row_is_todays_default():
    # the sweep's "default" row must stay what TrainConfig's defaults are, or its README line is
    # stale
    (opts,) = [o for n, o in sweep.SETS["seed-net"] if n == "default"]
    assert opts == []
    cfg = TrainConfig()
    assert (cfg.pad_mode, cfg.batch_size, cfg.lr) == ("reflect", 256, 0.4)


def test_final_val_reads_only_finished_runs(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "history.json").write_text(
        json.dumps([{"eval_accuracy": 80.0}, {"eval_accuracy": 88.5}])
    )
    assert sweep.final_val(run) is None  # no results.json yet: unfinished
    (run / "results.json").write_text("{}")
    assert sweep.final_val(run) == 88.5  # a run from before the TTA result was kept apart
    (run / "results.json").write_text(json.dumps({"eval_tta_accuracy": 89.1}))
    assert sweep.final_val(run) == 89.1


def test_summarize_mean_sd_and_difference_to_first_row():
    lines = sweep.summarize([("base", [88.0, 88.2, 88.4]), ("better", [89.0]), ("missing", [])])
    assert lines[1].split()[-3:] == ["88.20", "0.20", "+0.00"]
    assert lines[2].split()[-3:] == ["89.00", "0.00", "+0.80"]
    assert "no finished run" in lines[3]


students = load_script("student_networks")


@pytest.mark.parametrize("name", sorted(set(students.NETWORKS) - {"seed", "buggy"}))
def test_every_student_network_of_the_gpu_check_trains_in_plain_pytorch(name):
    """The script's promise covers networks that train in plain PyTorch (fp32, NCHW): each does."""
    factory, _ = students.NETWORKS[name]
    assert students.plain_pytorch_trains(factory)


def test_the_buggy_student_network_fails_in_plain_pytorch_too():
    with pytest.raises(RuntimeError, match="mat1 and mat2"):
        students.plain_pytorch_trains(students.NETWORKS["buggy"][0])
