"""Your own per-image augmentation: torchvision.transforms.v2 transforms named in
`TrainConfig.transforms`.

A spec is a string like "RandomRotation(degrees=15)" or "ColorJitter(brightness=0.3, contrast=0.3)"
(`config.parse_call`: literal arguments only). The loader applies them to uint8 images on the
training device, after its crop / flip and before cutout and normalisation, so values stay valid
pixels (0..255).

Why not simply ``transform(batch)``: a v2 transform called on a (B, C, H, W) tensor draws ONE set of
random parameters for the whole batch (one angle for every image). Here every image gets its own
draw, seeded from (key, image index, transform position), so a draw depends only on the run's (seed,
epoch) and the image: a resumed run and `DeviceLoader.preview` reproduce it exactly. torchvision
draws from torch's global RNG, so the calls run inside `torch.random.fork_rng` and leave the global
state as it was.

RandomRotation, RandomAffine and ColorJitter take a batched path: their own `make_params` draws each
image's parameters (the same draws as calling them per image), then one grid_sample / a few tensor
ops apply them to the whole batch: ~170 us per image for both on a loaded 2-core Xeon against ~560
us per image called one by one (benchmarks/augment_cost.py), and on a GPU no per-image kernel
launches; tests compare both paths. Every other transform is called once per image. Refused (see
REFUSED): Normalize, ToDtype, ConvertImageDtype, ToTensor, PILToTensor, ToImage, ToPILImage,
ToPureTensor, RGB, Compose, RandomApply, RandomChoice, RandomOrder, Lambda, MixUp, CutMix, FiveCrop,
TenCrop, the size changers (Resize, RandomResize, ScaleJitter, RandomShortestSize, RandomZoomOut,
RandomIoUCrop, Pad, CenterCrop) and the box / key-point / video helpers; any other transform whose
output on a 3x32x32 uint8 image is not a 3x32x32 uint8 image (e.g. RandomResizedCrop(size=64),
Grayscale(1)) is refused when it is built.
"""

from __future__ import annotations

import difflib
from typing import Any, Sequence

import torch

from ..base import ConfigError, parse_call

# Transforms that make no sense on one uint8 image before the built-in normalisation, and why.
REFUSED: dict[str, str] = {
    **dict.fromkeys(
        ("Normalize",),
        "the CIFAR-10 mean / std normalisation is built in and runs after the transforms",
    ),
    **dict.fromkeys(
        ("ToDtype", "ConvertImageDtype"), "images stay uint8 until the built-in normalisation"
    ),
    **dict.fromkeys(
        ("ToTensor", "PILToTensor", "ToImage", "ToPILImage", "ToPureTensor", "RGB"),
        "the images already are uint8 RGB tensors",
    ),
    **dict.fromkeys(
        ("Compose", "RandomApply", "RandomChoice", "RandomOrder", "Lambda"),
        "it takes transforms or functions, which a config cannot hold: list transforms one by one",
    ),
    **dict.fromkeys(
        ("MixUp", "CutMix"), "it mixes images and labels across a batch, not one image"
    ),
    **dict.fromkeys(("FiveCrop", "TenCrop"), "it returns several crops"),
    **dict.fromkeys(
        (
            "Resize",
            "RandomResize",
            "ScaleJitter",
            "RandomShortestSize",
            "RandomZoomOut",
            "RandomIoUCrop",
            "Pad",
            "CenterCrop",
        ),
        "it changes the image size; the networks expect 32x32",
    ),
    **dict.fromkeys(
        (
            "ClampBoundingBoxes",
            "ClampKeyPoints",
            "ConvertBoundingBoxFormat",
            "SanitizeBoundingBoxes",
            "SanitizeKeyPoints",
            "SetClampingMode",
            "UniformTemporalSubsample",
            "LinearTransformation",
            "Transform",
        ),
        "it is not an image augmentation",
    ),
}
_PREFIXES = ("torchvision.transforms.v2.", "transforms.v2.", "v2.")
_MASK64 = (1 << 64) - 1


def build_transform(spec: str) -> Any:
    """The torchvision.transforms.v2 transform a spec names, checked on a 3x32x32 uint8 image;
    ConfigError (one line) for an unknown name, bad arguments, a refused transform or one that
    breaks uint8 32x32.
    """
    from torchvision.transforms import v2

    name, kwargs = parse_call(spec, "transform")
    for prefix in _PREFIXES:
        name = name.removeprefix(prefix)
    if name in REFUSED:
        raise ConfigError(f"transform {spec!r} is not allowed: {REFUSED[name]}")
    cls = getattr(v2, name, None)
    if not (isinstance(cls, type) and issubclass(cls, v2.Transform)):
        known = [
            n
            for n in dir(v2)
            if isinstance(getattr(v2, n), type) and issubclass(getattr(v2, n), v2.Transform)
        ]
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"; did you mean {close[0]}?" if close else "; see torchvision.transforms.v2"
        raise ConfigError(f"unknown transform {name!r} in {spec!r}{hint}")
    args = [kwargs.pop(f"_{i}") for i in range(len(kwargs)) if f"_{i}" in kwargs]
    if isinstance(kwargs.get("interpolation"), str):
        kwargs["interpolation"] = _interpolation(kwargs["interpolation"], spec)
    try:
        transform = cls(*args, **kwargs)
    except Exception as e:  # TypeError / ValueError from the transform's own checks
        raise ConfigError(f"bad arguments for transform {spec!r}: {_one_line(e)}") from None
    probe = (
        torch.arange(3 * 32 * 32, dtype=torch.int64).remainder_(251).to(torch.uint8).view(3, 32, 32)
    )
    try:
        with torch.random.fork_rng(devices=[]):
            out = transform(probe)
    except Exception as e:
        raise ConfigError(
            f"transform {spec!r} fails on a 3x32x32 uint8 image: {_one_line(e)}"
        ) from None
    _check_output(spec, out, probe.shape)
    return transform


def _interpolation(name: str, spec: str) -> Any:
    """interpolation='bilinear' as an InterpolationMode: torchvision 0.29 takes the string, 0.26
    (Colab's) only the enum, so a spec written for either works on both."""
    from torchvision.transforms import InterpolationMode

    try:
        return InterpolationMode(name.lower())
    except ValueError:
        modes = ", ".join(repr(m.value) for m in InterpolationMode)
        raise ConfigError(
            f"bad interpolation {name!r} in transform {spec!r}: use one of {modes}"
        ) from None


def _one_line(e: Exception) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())}"


def _check_output(spec: str, out: Any, shape: torch.Size) -> None:
    if not isinstance(out, torch.Tensor) or out.dtype != torch.uint8 or out.shape != shape:
        got = (
            f"{out.dtype} {'x'.join(map(str, out.shape))}"
            if isinstance(out, torch.Tensor)
            else type(out).__name__
        )
        raise ConfigError(
            f"transform {spec!r} turns a uint8 {'x'.join(map(str, shape))} image into {got}; "
            "transforms must keep uint8 images of the same size"
        )


def image_seed(key: int, index: int, position: int) -> int:
    """A 63-bit seed for one image's draw of one transform (splitmix64 finaliser over the three
    ints)."""
    z = (
        key * 0x9E3779B97F4A7C15 + index * 0xBF58476D1CE4E5B9 + position * 0x94D049BB133111EB + 1
    ) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) >> 1


class ImageTransforms:
    """The transforms of `specs`, applied with an independent, seeded random draw per image.

    `fast=False` calls every transform once per image (the reference the batched paths are tested
    against).
    """

    def __init__(self, specs: Sequence[str] = (), fast: bool = True):
        # one spec alone, not its characters
        self.specs = [specs] if isinstance(specs, str) else list(specs)
        self.transforms = [build_transform(s) for s in self.specs]
        self.fast = fast

    def __bool__(self) -> bool:
        return bool(self.transforms)

    def __repr__(self) -> str:
        return f"ImageTransforms({self.specs!r})"

    def __call__(self, images: torch.Tensor, ids: Sequence[int], key: int) -> torch.Tensor:
        """Transform uint8 `images` (B, 3, H, W); `ids[i]` (a Python int, e.g. the dataset index)
        and `key` (e.g. derived from seed and epoch) seed image i's draws. Returns a new uint8
        tensor."""
        if not self.transforms:
            return images
        if len(ids) != len(images):
            raise ValueError(f"{len(images)} images but {len(ids)} ids")
        cuda = images.device.type == "cuda"
        index = (
            images.device.index
            if images.device.index is not None
            else (torch.cuda.current_device() if cuda else 0)
        )
        # fork (save and restore) the CPU RNG, and this GPU's if on one
        devices = [index] if cuda else []
        gens = [torch.default_generator] + (
            [torch.cuda.default_generators[devices[0]]] if cuda else []
        )
        with torch.random.fork_rng(devices=devices, device_type="cuda"):
            for k, (spec, t) in enumerate(zip(self.specs, self.transforms)):
                seeds = [image_seed(key, i, k) for i in ids]
                batched = _BATCHED.get(type(t).__name__) if self.fast else None
                if batched is not None and _batchable(t):
                    images = batched(t, images, _draw(t, images, seeds))
                else:
                    images = _per_image(spec, t, images, seeds, gens)
        return images


def _per_image(
    spec: str, t: Any, images: torch.Tensor, seeds: list[int], gens: list[torch.Generator]
) -> torch.Tensor:
    out = torch.empty_like(images)
    for i, s in enumerate(seeds):
        for g in gens:
            g.manual_seed(s)
        y = t(images[i])
        if y.shape != images.shape[1:] or y.dtype != torch.uint8:
            _check_output(spec, y, images.shape[1:])
        out[i] = y
    return out


def _draw(t: Any, images: torch.Tensor, seeds: list[int]) -> list[dict[str, Any]]:
    """Each image's parameters from the transform's own make_params: the draws a per-image call
    makes (RandomRotation, RandomAffine and ColorJitter draw nothing outside make_params)."""
    probe, params = [images[0]], []
    for s in seeds:
        torch.default_generator.manual_seed(s)
        params.append(t.make_params(probe))
    return params


def _to(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host -> device without waiting for the device's queue (pinned memory, non_blocking)."""
    return x.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else x.to(device)


# ---------------------------------------------------------------- batched paths (private
# torchvision helpers)
def _batchable(t: Any) -> bool:
    # RandomRotation(expand=True) changes the size: per image (refused there)
    return not getattr(t, "expand", False)


def _affine_grid(theta: torch.Tensor, w: int, h: int) -> torch.Tensor:
    """torchvision's `_affine_grid` for a batch of (B, 2, 3) matrices: one sampling grid per
    image."""
    base = torch.empty(1, h, w, 3, dtype=theta.dtype, device=theta.device)
    base[..., 0].copy_(
        torch.linspace((1.0 - w) * 0.5, (w - 1.0) * 0.5, steps=w, device=theta.device)
    )
    base[..., 1].copy_(
        torch.linspace((1.0 - h) * 0.5, (h - 1.0) * 0.5, steps=h, device=theta.device).unsqueeze_(
            -1
        )
    )
    base[..., 2].fill_(1)
    scaled = theta.transpose(1, 2).div(
        torch.tensor([0.5 * w, 0.5 * h], dtype=theta.dtype, device=theta.device)
    )
    return base.view(1, h * w, 3).expand(len(theta), -1, -1).bmm(scaled).view(-1, h, w, 2)


def _geometric(t: Any, images: torch.Tensor, params: list[dict[str, Any]]) -> torch.Tensor:
    """RandomRotation / RandomAffine: per-image inverse matrices (as F.rotate / F.affine compute
    them), then one grid_sample over the batch."""
    from torchvision.transforms.v2._utils import _get_fill
    from torchvision.transforms.v2.functional._geometry import (
        _affine_parse_args,
        _apply_grid_transform,
        _check_interpolation,
        _get_inverse_affine_matrix,
    )

    h, w = images.shape[-2:]
    mode = _check_interpolation(t.interpolation)
    center = [0.0, 0.0] if t.center is None else [c - s * 0.5 for c, s in zip(t.center, (w, h))]
    rotation = type(t).__name__ == "RandomRotation"
    mats, exact = [], []  # exact: angles F.rotate does without resampling (0, 90, 180, 270 degrees)
    for i, p in enumerate(params):
        if rotation:
            angle = p["angle"] % 360
            if t.center is None and (angle in (0, 180) or (h == w and angle in (90, 270))):
                exact.append(i)
            mats.append(_get_inverse_affine_matrix(center, -angle, [0.0, 0.0], 1.0, [0.0, 0.0]))
        else:
            angle, translate, shear, _ = _affine_parse_args(
                p["angle"], p["translate"], p["scale"], p["shear"], mode, t.center
            )
            mats.append(
                _get_inverse_affine_matrix(
                    center, angle, [float(v) for v in translate], p["scale"], shear
                )
            )
    theta = _to(torch.tensor(mats, dtype=torch.float32).view(-1, 2, 3), images.device)
    out = _apply_grid_transform(
        images, _affine_grid(theta, w, h), mode.value, fill=_get_fill(t._fill, torch.Tensor)
    )
    for i in exact:
        out[i] = t.transform(images[i], params[i])
    return out


# ColorJitter's fn_idx 0..3
_JITTER = ("brightness_factor", "contrast_factor", "saturation_factor", "hue_factor")


def _jitter(t: Any, images: torch.Tensor, params: list[dict[str, Any]]) -> torch.Tensor:
    """ColorJitter: each image's four adjustments in its own random order, as batched ops over the
    images whose n-th adjustment is the same (16 groups at most), with per-image factors."""
    from torchvision.transforms.v2.functional import to_dtype_image
    from torchvision.transforms.v2.functional._color import (
        _hsv_to_rgb,
        _rgb_to_grayscale_image,
        _rgb_to_hsv,
    )

    def gray(x: torch.Tensor) -> torch.Tensor:
        return _rgb_to_grayscale_image(x, num_output_channels=1, preserve_dtype=False).floor_()

    def blend(x: torch.Tensor, other: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        # torchvision's _blend: x * f + other * (1 - f), (1 - f) rounded from float64 like its
        # Python scalar
        return x.mul(f.float()).add_(other * (1.0 - f).float()).clamp_(0, 255).to(torch.uint8)

    def hue(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        hh, s, v = _rgb_to_hsv(to_dtype_image(x, torch.float32, scale=True)).unbind(dim=-3)
        hsv = torch.stack((hh.add(f.float().view(-1, 1, 1)).remainder_(1.0), s, v), dim=-3)
        return to_dtype_image(_hsv_to_rgb(hsv), torch.uint8, scale=True)

    ops = (
        lambda x, f: x.mul(f.float()).clamp_(0, 255).to(torch.uint8),
        lambda x, f: blend(x, gray(x).mean(dim=(-3, -2, -1), keepdim=True), f),
        lambda x, f: blend(x, gray(x), f),
        hue,
    )
    orders = [[k for k in p["fn_idx"].tolist() if p[_JITTER[k]] is not None] for p in params]
    factors = torch.tensor([[p[k] or 0.0 for k in _JITTER] for p in params], dtype=torch.float64)
    out = images.clone()
    for step in range(4):
        for op in range(4):
            sel = [i for i, o in enumerate(orders) if len(o) > step and o[step] == op]
            if sel:
                idx = _to(torch.tensor(sel), images.device)
                f = _to(factors[sel, op].view(-1, 1, 1, 1), images.device)
                out[idx] = ops[op](out[idx], f)
    return out


_BATCHED = {"RandomRotation": _geometric, "RandomAffine": _geometric, "ColorJitter": _jitter}
