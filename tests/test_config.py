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


def test_every_field_has_its_whole_comment_as_help():
    """The comment above each field is its documentation and the CLI's --help text: the help is the
    whole comment (read here independently, line by line from the source), ends a sentence, and a
    field with a fixed set of values names each of them."""
    import dataclasses
    import inspect

    from cifarkit.options import CHOICES, field_help

    helps = field_help()
    lines = inspect.getsource(TrainConfig).splitlines()
    for f in dataclasses.fields(TrainConfig):
        (at,) = [i for i, line in enumerate(lines) if line.strip().startswith(f"{f.name}: ")]
        above = []
        while lines[at - 1 - len(above)].strip().startswith("# ") and not lines[
            at - 1 - len(above)
        ].strip().startswith("# ---"):
            above.insert(0, lines[at - 1 - len(above)].strip()[2:])
        assert above, f"{f.name} has no comment above it"
        assert helps[f.name] == " ".join(above), f.name
        assert helps[f.name].endswith("."), (
            f"{f.name}: the help stops mid-sentence: {helps[f.name]}"
        )
        for choice in CHOICES.get(f.name, ()):
            assert f'"{choice}"' in helps[f.name], f"{f.name}: {choice!r} is not explained"
        assert "_MODES" not in helps[f.name] and "PRECISIONS" not in helps[f.name]
