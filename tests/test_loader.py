"""Batched augmentation on the device: correct crops and flips, per-image transforms, reproducible
per (seed, epoch), the preview equal to what training sees, and defaults equal to TrainConfig's."""

import inspect

import pytest
import torch
import torch.nn.functional as F

from cifarkit.base import CIFAR10_MEAN, CIFAR10_STD, ConfigError
from cifarkit.data.loader import DeviceLoader, augment, normalize


def denormalize(x):
    """The inverse of `normalize`: float images in [0, 1]."""
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (CIFAR10_MEAN, CIFAR10_STD))
    return (x.float() * std + mean).clamp(0, 1)


from cifarkit.config import TrainConfig
from cifarkit.data.augmentation import crop_at, cutout_at, flip_where
from cifarkit.data.transforms import REFUSED, ImageTransforms

ROTATE = "RandomRotation(degrees=30)"
JITTER = "ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.1)"


def images(n=16, seed=0, side=32):
    return torch.randint(
        0, 256, (n, 3, side, side), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
    )


def to_uint8(batch):
    """What the loader normalised, back as the uint8 images it started from."""
    return (denormalize(batch) * 255).round().to(torch.uint8)


def epoch_uint8(loader, epoch):
    """The epoch's yielded batches as uint8 images, sorted by label (the tests use labels = dataset
    index)."""
    loader.set_epoch(epoch)
    xs, ys = zip(*loader)
    return to_uint8(torch.cat(xs))[torch.cat(ys).argsort()], torch.cat(ys)


# ---------------------------------------------------------------- the built-in ops
# Each draws its per-image parameters as the loader does, then applies the loader's own op.
def random_crop(x, padding, g, mode):
    dy, dx = (torch.randint(0, 2 * padding + 1, (len(x),), generator=g) for _ in range(2))
    return crop_at(x, dy, dx, padding, mode)


def random_flip(x, g):
    return flip_where(x, torch.rand(len(x), generator=g) < 0.5)


def cutout(x, size, g=None):
    if size == 0:
        return cutout_at(
            x, torch.zeros(len(x), dtype=torch.long), torch.zeros(len(x), dtype=torch.long), 0
        )
    y0, x0 = (torch.randint(0, 32 - size + 1, (len(x),), generator=g) for _ in range(2))
    return cutout_at(x, y0, x0, size)


def test_random_crop_is_a_window_of_the_zero_padded_image():
    x = images()
    out = random_crop(x, 4, torch.Generator().manual_seed(1), mode="zeros")
    padded = F.pad(x, (4,) * 4)
    offsets = set()
    for i in range(len(x)):
        hits = [
            (dy, dx)
            for dy in range(9)
            for dx in range(9)
            if torch.equal(out[i], padded[i, :, dy : dy + 32, dx : dx + 32])
        ]
        assert hits, f"crop {i} is not a window of its padded image"
        offsets.add(hits[0])
    assert len(offsets) > 5  # offsets really vary


def test_reflect_crop_is_a_window_of_the_reflect_padded_image():
    x = images()
    out = random_crop(x, 2, torch.Generator().manual_seed(2), mode="reflect")
    padded = F.pad(x.float(), (2,) * 4, mode="reflect").to(torch.uint8)
    for i in range(len(x)):
        assert any(
            torch.equal(out[i], padded[i, :, dy : dy + 32, dx : dx + 32])
            for dy in range(5)
            for dx in range(5)
        )


def test_random_flip_mirrors_about_half():
    x = images(200)
    out = random_flip(x, torch.Generator().manual_seed(0))
    same = [torch.equal(o, i) for o, i in zip(out, x)]
    mirrored = [torch.equal(o, i.flip(2)) for o, i in zip(out, x)]
    assert all(s or m for s, m in zip(same, mirrored))
    assert 70 < sum(mirrored) < 130


def test_cutout_paints_one_square_of_the_mean_colour():
    x = torch.full((20, 3, 32, 32), 255, dtype=torch.uint8)
    out = cutout(x, 8, torch.Generator().manual_seed(0))
    painted = (out != 255).all(1)  # (N, H, W): pixels changed in every channel
    assert (painted.sum((1, 2)) == 64).all()
    for m in painted:
        ys, xs = m.nonzero(as_tuple=True)
        assert ys.max() - ys.min() == 7 and xs.max() - xs.min() == 7  # one 8x8 square
    assert abs(normalize(out)[painted.unsqueeze(1).expand(-1, 3, -1, -1)].mean().item()) < 0.01
    assert torch.equal(cutout(x, 0), x)


def test_normalize_round_trip_and_constants():
    x = images()
    z = normalize(x)
    assert z.dtype == torch.float32
    assert torch.allclose(denormalize(z), x.float() / 255, atol=1e-6)
    assert torch.equal(to_uint8(z), x)  # exact: the preview tests below rely on it
    grey = torch.full((1, 3, 1, 1), round(CIFAR10_MEAN[0] * 255), dtype=torch.uint8)
    assert abs(normalize(grey)[0, 0, 0, 0].item()) < 0.01
    assert normalize(x, channels_last=True).is_contiguous(memory_format=torch.channels_last)


# ---------------------------------------------------------------- defaults and from_config
def test_augmentation_defaults_are_train_configs():
    cfg = TrainConfig()
    for fn in (DeviceLoader.__init__, augment):
        params = inspect.signature(fn).parameters
        assert params["pad_mode"].default == cfg.pad_mode == "reflect"
        assert params["flip"].default == cfg.flip == "alternate"
        assert params["cutout"].default == cfg.cutout and params["seed"].default == cfg.seed
    assert (
        inspect.signature(DeviceLoader.__init__).parameters["crop_padding"].default
        == cfg.crop_padding
    )
    assert inspect.signature(augment).parameters["padding"].default == cfg.crop_padding


def test_from_config_takes_every_setting():
    cfg = TrainConfig(
        batch_size=7,
        eval_batch_size=9,
        crop_padding=2,
        pad_mode="zeros",
        flip="random",
        cutout=5,
        transforms=[ROTATE],
        channels_last="yes",
        seed=11,
    )
    tr = DeviceLoader.from_config(images(20), torch.arange(20), cfg, train=True, device="cpu")
    assert (
        tr.batch_size,
        tr.crop_padding,
        tr.pad_mode,
        tr.flip,
        tr.cutout,
        tr.seed,
        tr.channels_last,
    ) == (7, 2, "zeros", "random", 5, 11, True)
    assert tr.transforms.specs == [ROTATE] and tr.train
    ev = DeviceLoader.from_config(images(20), torch.arange(20), cfg, train=False, device="cpu")
    assert ev.batch_size == 9 and not ev.train and len(ev) == 3


def test_bad_settings_are_one_line_config_errors():
    # validated once, by the config
    for kw in (dict(flip="sometimes"), dict(pad_mode="wrap"), dict(cutout=40)):
        with pytest.raises(ConfigError) as e:
            TrainConfig(**kw)
        assert "\n" not in str(e.value)
    # what only the images / torchvision can tell
    for kw in (dict(cutout=20), dict(transforms=["Nope"])):
        with pytest.raises(ConfigError) as e:
            DeviceLoader(images(4, side=16), torch.arange(4), 2, train=True, **kw)
        assert "\n" not in str(e.value)


# ---------------------------------------------------------------- epochs
def test_train_loader_visits_every_image_once_per_epoch_reproducibly():
    x = images(50)
    loader = DeviceLoader(
        x, torch.arange(50), 16, train=True, seed=3, cutout=4, transforms=[ROTATE]
    )
    assert len(loader) == 4
    batches = list(loader)
    assert [len(y) for _, y in batches] == [16, 16, 16, 2]
    first = torch.cat([y for _, y in batches])
    assert sorted(first.tolist()) == list(range(50))
    again = list(
        DeviceLoader(x, torch.arange(50), 16, train=True, seed=3, cutout=4, transforms=[ROTATE])
    )
    # a fresh loader: same (seed, epoch), same everything
    for (xa, ya), (xb, yb) in zip(batches, again):
        assert torch.equal(ya, yb) and torch.equal(xa, xb)
    loader.set_epoch(1)
    assert not torch.equal(torch.cat([y for _, y in loader]), first)
    other_seed = DeviceLoader(
        x, torch.arange(50), 16, train=True, seed=4, cutout=4, transforms=[ROTATE]
    )
    assert not torch.equal(torch.cat([y for _, y in other_seed]), first)


def test_epoch_larger_than_one_chunk(monkeypatch):
    import cifarkit.data.loader as loader_mod

    monkeypatch.setattr(loader_mod, "CHUNK", 7)  # 50 images in 8 chunks: same result as one chunk
    x = images(50)
    small = epoch_uint8(
        DeviceLoader(x, torch.arange(50), 16, train=True, cutout=4, transforms=[JITTER]), 2
    )[0]
    monkeypatch.setattr(loader_mod, "CHUNK", 10_000)
    assert torch.equal(
        small,
        epoch_uint8(
            DeviceLoader(x, torch.arange(50), 16, train=True, cutout=4, transforms=[JITTER]), 2
        )[0],
    )


def test_eval_loader_is_ordered_and_unaugmented():
    x = images(10)
    loader = DeviceLoader(x, torch.arange(10), 4, train=False)
    xs, ys = zip(*loader)
    assert torch.equal(torch.cat(ys), torch.arange(10))
    assert torch.allclose(torch.cat(xs), normalize(x))
    assert torch.equal(loader.preview([3, 1]), x[[3, 1]])


def test_alternating_flip_mirrors_complementary_halves_on_even_and_odd_epochs():
    x = images(40)
    loader = DeviceLoader(
        x, torch.arange(40), 40, train=True, crop_padding=0, flip="alternate", seed=1
    )
    flipped = []
    for epoch in (0, 1, 2, 3):
        seen, _ = epoch_uint8(loader, epoch)
        assert all(torch.equal(s, i) or torch.equal(s, i.flip(2)) for s, i in zip(seen, x))
        flipped.append(torch.tensor([torch.equal(s, i.flip(2)) for s, i in zip(seen, x)]))
    assert 10 < flipped[0].sum() < 30
    assert torch.equal(flipped[1], ~flipped[0]) and torch.equal(flipped[2], flipped[0])
    assert torch.equal(flipped[3], flipped[1])


def test_epoch_reads_nothing_back_to_the_host(monkeypatch):
    # On a GPU, .item() / .tolist() / nonzero() in the loop would make every step wait for the
    # device.
    loader = DeviceLoader(images(50), torch.arange(50), 16, train=True, cutout=4)
    for name in ("item", "tolist", "nonzero", "__bool__", "__int__"):
        monkeypatch.setattr(
            torch.Tensor, name, lambda *a, _n=name, **k: pytest.fail(f"host read: {_n}")
        )
    for _ in loader:
        pass


# ---------------------------------------------------------------- preview and augment
def test_preview_is_exactly_what_training_sees():
    x = images(40)
    loader = DeviceLoader(
        x,
        torch.arange(40),
        16,
        train=True,
        crop_padding=3,
        cutout=6,
        seed=5,
        transforms=[ROTATE, JITTER],
    )
    for epoch in (0, 1):
        seen, _ = epoch_uint8(loader, epoch)
        picks = [5, 0, 39, 17]
        shown = loader.preview(picks, epoch=epoch)
        assert shown.dtype == torch.uint8 and shown.shape == (4, 3, 32, 32)
        assert torch.equal(shown, seen[picks])
    assert not torch.equal(loader.preview(picks, 0), loader.preview(picks, 1))
    with pytest.raises(IndexError):
        loader.preview([40])


def test_augment_is_the_training_augmentation():
    x = images(12)
    assert torch.equal(augment(x, padding=0, flip="none"), x)
    loader = DeviceLoader(x, torch.arange(12), 5, train=True, cutout=4, seed=2)
    assert torch.equal(augment(x, cutout=4, seed=2, epoch=1), loader.preview(range(12), epoch=1))


# ---------------------------------------------------------------- transforms
def test_each_image_gets_its_own_random_draw():
    same = images(1).expand(32, -1, -1, -1).contiguous()  # 32 identical images
    out = ImageTransforms([ROTATE])(same, range(32), key=0)
    assert out.dtype == torch.uint8 and out.shape == same.shape
    assert len({o.numpy().tobytes() for o in out}) == 32  # a batch-level call would give 1
    loader = DeviceLoader(
        same, torch.arange(32), 8, train=True, crop_padding=0, flip="none", transforms=[ROTATE]
    )
    seen, _ = epoch_uint8(loader, 0)
    assert len({s.numpy().tobytes() for s in seen}) == 32


def test_transform_draws_depend_only_on_seed_epoch_and_image():
    x = images(20)
    state = torch.get_rng_state()
    t = ImageTransforms([ROTATE, JITTER])
    a = t(x, range(20), key=7)
    # the global RNG (dropout, ...) is left as it was
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(123)  # whatever the global RNG holds
    assert torch.equal(t(x, range(20), key=7), a)
    assert torch.equal(t(x[5:9], range(5, 9), key=7), a[5:9])  # a subset draws the same
    assert not torch.equal(t(x, range(20), key=8), a)


def test_transforms_run_after_crop_and_flip_and_before_cutout():
    x = images(10)
    plain = DeviceLoader(x, torch.arange(10), 10, train=True, seed=3)
    full = DeviceLoader(x, torch.arange(10), 10, train=True, seed=3, transforms=[JITTER], cutout=8)
    expect = ImageTransforms([JITTER])(plain.preview(range(10), 1), range(10), key=3 * 100_003 + 1)
    got = full.preview(range(10), 1)
    mean = torch.tensor([round(255 * m) for m in CIFAR10_MEAN], dtype=torch.uint8).view(1, 3, 1, 1)
    painted = (got == mean).all(1)  # the cutout square keeps the exact mean colour: painted last
    assert (painted.sum((1, 2)) >= 64).all()
    assert torch.equal(
        got.masked_fill(painted.unsqueeze(1), 0), expect.masked_fill(painted.unsqueeze(1), 0)
    )


@pytest.mark.parametrize(
    "spec",
    [
        ROTATE,
        "RandomRotation(degrees=(-180, 180), interpolation='bilinear', fill=[9, 99, 199])",
        "RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1), shear=5)",
        "RandomRotation(degrees=(90, 90))",
        JITTER,
        "ColorJitter(0.4, 0.4)",
    ],
)
def test_batched_paths_equal_per_image_calls(spec):
    x = images(200)
    fast = ImageTransforms([spec])(x, range(200), key=1)
    slow = ImageTransforms([spec], fast=False)(x, range(200), key=1)
    diff = (fast.int() - slow.int()).abs()
    # geometric: identical; ColorJitter: float rounding (fused multiply-add in torchvision's blend)
    # moves a few pixel values by 1-3 levels
    assert diff.max() <= 3 and (diff > 0).float().mean() < 1e-3


def test_other_transforms_run_per_image():
    x = images(8)
    out = ImageTransforms(["RandomErasing(p=1.0)", "GaussianBlur(kernel_size=3)", "RandAugment()"])(
        x, range(8), key=0
    )
    assert out.dtype == torch.uint8 and out.shape == x.shape and not torch.equal(out, x)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("RandomRotaton(15)", r"unknown transform 'RandomRotaton' .*did you mean RandomRotation\?"),
        (
            "Normalize(mean=[0.5], std=[0.5])",
            "not allowed: the CIFAR-10 mean / std normalisation is built in",
        ),
        ("ToDtype(dtype='float32')", "not allowed: images stay uint8"),
        ("ToTensor", "not allowed"),
        ("ToImage", "not allowed"),
        ("Resize(size=64)", "not allowed: it changes the image size"),
        ("RandomResizedCrop(size=64)", "turns a uint8 3x32x32 image into torch.uint8 3x64x64"),
        ("RandomRotation(degrees=15, expand=True)", "turns a uint8 3x32x32 image into"),
        (
            "Grayscale(num_output_channels=1)",
            "turns a uint8 3x32x32 image into torch.uint8 1x32x32",
        ),
        ("RandomRotation(degrees=-5)", "bad arguments for transform"),
        (
            "RandomRotation(degrees=15, colour=2)",
            "bad arguments for transform .*unexpected keyword",
        ),
        ("RandomRotation(degrees=__import__('os'))", "expected Name or Name"),
    ],
)
def test_bad_transforms_are_one_line_config_errors(spec, message):
    with pytest.raises(ConfigError, match=message) as e:
        ImageTransforms([spec])
    assert "\n" not in str(e.value)


def test_refused_list_names_real_transforms():
    from torchvision.transforms import v2

    assert all(hasattr(v2, name) for name in REFUSED)
    # same size: fine
    ImageTransforms(["RandomResizedCrop(size=32, scale=(0.8, 1.0))", "RandomHorizontalFlip()"])
