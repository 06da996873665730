"""Batched augmentation on the device: correct crops and flips, reproducible per (seed, epoch)."""
import torch
import torch.nn.functional as F

from cifarkit import CIFAR10_MEAN, DeviceLoader, augment, denormalize, normalize
from cifarkit.loader import random_crop, random_flip


def images(n=16):
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def test_random_crop_is_a_window_of_the_zero_padded_image():
    x = images()
    out = random_crop(x, 4, torch.Generator().manual_seed(1))
    padded = F.pad(x, (4,) * 4)
    offsets = set()
    for i in range(len(x)):
        hits = [(dy, dx) for dy in range(9) for dx in range(9)
                if torch.equal(out[i], padded[i, :, dy:dy + 32, dx:dx + 32])]
        assert hits, f"crop {i} is not a window of its padded image"
        offsets.add(hits[0])
    assert len(offsets) > 5  # offsets really vary


def test_random_flip_mirrors_about_half():
    x = images(200)
    out = random_flip(x, torch.Generator().manual_seed(0))
    same = [torch.equal(o, i) for o, i in zip(out, x)]
    mirrored = [torch.equal(o, i.flip(2)) for o, i in zip(out, x)]
    assert all(s or m for s, m in zip(same, mirrored))
    assert 70 < sum(mirrored) < 130


def test_no_padding_no_flip_is_identity():
    x = images()
    assert torch.equal(augment(x, padding=0, flip=False), x)


def test_normalize_round_trip_and_constants():
    x = images()
    z = normalize(x)
    assert z.dtype == torch.float32
    assert torch.allclose(denormalize(z), x.float() / 255, atol=1e-6)
    grey = torch.full((1, 3, 1, 1), round(CIFAR10_MEAN[0] * 255), dtype=torch.uint8)
    assert abs(normalize(grey)[0, 0, 0, 0].item()) < 0.01
    assert normalize(x, channels_last=True).is_contiguous(memory_format=torch.channels_last)


def test_train_loader_visits_every_image_once_per_epoch_reproducibly():
    x = images(50)
    y = torch.arange(50)
    loader = DeviceLoader(x, y, 16, train=True, seed=3)
    assert len(loader) == 4
    first = torch.cat([b[1] for b in loader])
    assert sorted(first.tolist()) == list(range(50))
    again = [b for b in loader]
    assert torch.equal(torch.cat([b[1] for b in again]), first)  # same epoch, same order and augmentation
    loader.set_epoch(1)
    assert not torch.equal(torch.cat([b[1] for b in loader]), first)


def test_eval_loader_is_ordered_and_unaugmented():
    x = images(10)
    loader = DeviceLoader(x, torch.arange(10), 4, train=False)
    xs, ys = zip(*loader)
    assert torch.equal(torch.cat(ys), torch.arange(10))
    assert torch.allclose(torch.cat(xs), normalize(x))


def test_reflect_crop_is_a_window_of_the_reflect_padded_image():
    x = images()
    out = random_crop(x, 2, torch.Generator().manual_seed(2), mode="reflect")
    padded = F.pad(x.float(), (2,) * 4, mode="reflect").to(torch.uint8)
    for i in range(len(x)):
        assert any(torch.equal(out[i], padded[i, :, dy:dy + 32, dx:dx + 32]) for dy in range(5) for dx in range(5))


def test_alternating_flip_mirrors_complementary_halves_on_even_and_odd_epochs():
    x = images(40)
    loader = DeviceLoader(x, torch.arange(40), 40, train=True, crop_padding=0, flip="alternate", seed=1)
    flipped = []
    for epoch in (0, 1, 2):
        loader.set_epoch(epoch)
        batch, ids = next(iter(loader))
        expect = normalize(x[ids].flip(3))
        flipped.append(torch.tensor([torch.allclose(b, e) for b, e in zip(batch, expect)])[ids.argsort()])
    assert 10 < flipped[0].sum() < 30
    assert torch.equal(flipped[1], ~flipped[0]) and torch.equal(flipped[2], flipped[0])


def test_cutout_paints_one_square_of_the_mean_colour():
    from cifarkit.loader import cutout
    x = torch.full((20, 3, 32, 32), 255, dtype=torch.uint8)
    out = cutout(x, 8, torch.Generator().manual_seed(0))
    painted = (out != 255).all(1)  # (N, H, W): pixels changed in every channel
    assert (painted.sum((1, 2)) == 64).all()
    for m in painted:
        ys, xs = m.nonzero(as_tuple=True)
        assert ys.max() - ys.min() == 7 and xs.max() - xs.min() == 7  # one 8x8 square
    assert abs(normalize(out)[painted.unsqueeze(1).expand(-1, 3, -1, -1)].mean().item()) < 0.01
    assert torch.equal(cutout(x, 0), x)
