"""TrainConfig: round trip, recipes, and configs saved by older versions of cifarkit."""

import pytest

from cifarkit.base import ConfigError
from cifarkit.config import TrainConfig
from cifarkit.recipes import RECIPES


def test_round_trip_and_recipes():
    for name in RECIPES:
        cfg = TrainConfig.from_recipe(name)
        assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    # the original recipe: plain SGD, nothing added
    assert TrainConfig.from_recipe("seed").lookahead is False
    # A recipe with overrides takes today's defaults for everything else (never the legacy values).
    assert TrainConfig.from_recipe("default", seed=3) == TrainConfig(seed=3)


def test_old_config_keeps_the_behaviour_it_was_trained_with():
    # A config.json written before flip modes, lookahead, BN-LR scaling and the linear schedule's
    # ends existed.
    old = {
        k: v
        for k, v in TrainConfig.from_recipe("seed").to_dict().items()
        if k not in ("pad_mode", "cutout", "lr_start", "lr_end", "bias_lr_scale", "lookahead")
    }
    old["flip"] = True
    cfg = TrainConfig.from_dict(old)
    assert (cfg.flip, cfg.lookahead, cfg.bias_lr_scale, cfg.pad_mode, cfg.cutout) == (
        "random",
        False,
        1.0,
        "zeros",
        0,
    )
    assert TrainConfig.from_dict({**old, "flip": False}).flip == "none"


def test_unknown_field_is_an_error():
    with pytest.raises(ConfigError, match="unknown config field"):
        TrainConfig.from_dict({"learning_rate": 0.1})


@pytest.mark.parametrize(
    "field, value",
    [
        ("lr", float("inf")),
        ("lr", float("nan")),
        ("momentum", float("nan")),
        ("weight_decay", float("inf")),
        ("label_smoothing", "0.1"),
        ("lr", 1e308),
        ("gamma", True),
    ],
)
def test_numeric_options_are_finite_numbers_in_range(field, value):
    with pytest.raises(ConfigError, match=rf"^{field} must be"):
        TrainConfig(**{field: value})


def test_every_field_has_its_one_line_of_help():
    # The comment beside each default is the field's documentation and the CLI's --help text.
    import dataclasses

    from cifarkit.config import field_help

    helps = field_help()
    missing = [f.name for f in dataclasses.fields(TrainConfig) if len(helps.get(f.name, "")) < 10]
    assert not missing, f"fields without a comment: {missing}"
