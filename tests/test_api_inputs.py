"""Bad input to the Python API a student calls: one line each, saying what to pass."""

import pytest
import torch
from torch import nn

import cifarkit as ck
from cifarkit.base import CifarkitError, ConfigError


def cfg_for(tmp_path, **kw):
    base = dict(
        epochs=1,
        batch_size=10,
        eval_batch_size=20,
        out=str(tmp_path / "run"),
        progress=False,
        precision="fp32",
        tta="none",
        device="cpu",
    )
    return ck.TrainConfig(**{**base, **kw})


def one_line(e) -> str:
    assert "\n" not in str(e.value), str(e.value)
    return str(e.value)


@pytest.mark.parametrize(
    "data, needle",
    [
        ((torch.zeros(4, 3, 32, 32), torch.zeros(4)), "got tuple"),
        ([1, 2, 3], "got list"),
        (42, "got int"),
    ],
)
def test_data_of_another_kind_is_refused_in_one_line(tmp_path, data, needle):
    with pytest.raises(ConfigError) as e:
        ck.fit(cfg_for(tmp_path), data=data)
    msg = one_line(e)
    assert needle in msg and "ck.load_cifar10(PATH)" in msg
    assert not (tmp_path / "run").exists()  # nothing written


def test_data_as_a_path_is_loaded_and_recorded(tmp_path, tree):
    r = ck.fit(cfg_for(tmp_path), data=str(tree))
    assert r.config.data == str(tree) and len(r.history) == 1


def test_a_network_with_every_parameter_frozen_is_one_line(tmp_path, learnable_data):
    class Frozen(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 10, 3)
            self.c.requires_grad_(False)

        def forward(self, x):
            return self.c(x).mean((2, 3))

    with pytest.raises(ConfigError) as e:
        ck.fit(cfg_for(tmp_path), data=learnable_data, model=Frozen)
    assert "every parameter of Frozen is frozen" in one_line(e)


def test_a_config_that_is_not_one_is_one_line(tmp_path):
    with pytest.raises(ConfigError) as e:
        ck.fit({"epochs": 1})
    assert "fit takes a TrainConfig first, got dict" in one_line(e)


@pytest.mark.parametrize(
    "kw, needle",
    [
        (dict(lookahead="False"), "lookahead must be True or False, got str 'False'"),
        (dict(val_split="5"), "val_split must be a whole number, got str '5'"),
        (dict(crop_padding="4"), "crop_padding must be a whole number"),
        (dict(cutout="8"), "cutout must be a whole number"),
        (dict(milestones=5), "milestones must be a list, got int 5"),
        (dict(val_split=2.5), "val_split must be a whole number, got float 2.5"),
        (dict(epochs=True), "epochs must be a whole number, got bool True"),
        (dict(lr="0.1"), "lr must be a number, got str"),
        (dict(transforms="RandomRotation(15)"), "transforms must be a list"),
    ],
)
def test_config_fields_of_the_wrong_type_are_one_line(kw, needle):
    with pytest.raises(ConfigError) as e:
        ck.TrainConfig(**kw)
    assert needle in one_line(e)


def test_a_url_to_predict_is_one_line(tmp_path):
    with pytest.raises(CifarkitError) as e:
        ck.predict_image(nn.Conv2d(3, 10, 3), "https://example.com/cat.jpg")
    msg = one_line(e)
    assert "https://example.com/cat.jpg is a URL" in msg and "download it first" in msg


def test_a_batch_too_large_for_memory_names_the_batch_size(tmp_path, learnable_data):
    class Hungry(nn.Module):
        """Runs out of memory on batches of more than 20 images, as a GPU would."""

        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 10, 3)

        def forward(self, x):
            if len(x) > 20:
                raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return self.c(x).mean((2, 3))

    with pytest.raises(CifarkitError) as e:
        ck.fit(
            cfg_for(tmp_path, batch_size=50, channels_last="no"), data=learnable_data, model=Hungry
        )
    msg = one_line(e)
    assert "out of memory running Hungry on a batch of 50 images" in msg and "batch_size" in msg
