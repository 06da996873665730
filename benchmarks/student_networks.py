"""A dozen networks written the way students write them, each trained with every default on this
machine's device: what precision and layout the runtime chose, or the one line that refused it.

    python benchmarks/student_networks.py --data PATH [--epochs 1] [--limit-train 5000] [--out FILE]

Each network trains in plain PyTorch (fp32, NCHW); the promise tested is that each also trains in
cifarkit with every default on a CPU and on CUDA, or is refused in one line naming its own line only
when it fails in every candidate (runtime.decide). One JSON line per network goes to --out (default:
benchmarks/results/student-networks-<device>.jsonl). Run it wherever a GPU is lent (it is part of
the prepared GPU check), and on a CPU for comparison.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


class FlattenView(nn.Module):
    """The classic: a .view that flattens a 4x4 map into a Linear (needs NCHW-contiguous maps)."""

    def __init__(self):
        super().__init__()
        self.f = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(32), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(64), nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(128), nn.MaxPool2d(2),
        )  # fmt: skip
        self.fc = nn.Linear(128 * 4 * 4, 10)

    def forward(self, x):
        return self.fc(self.f(x).view(-1, 128 * 4 * 4))  # (N, 2048) -> (N, 10)


class Flat(nn.Module):
    """A helper module with a .view inside, used on a 2x2 map."""

    def forward(self, x):
        return x.view(x.size(0), -1)


class HelperView(nn.Module):
    def __init__(self):
        super().__init__()
        self.f = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4),
        )  # fmt: skip
        self.head = nn.Sequential(Flat(), nn.Linear(64 * 2 * 2, 10))

    def forward(self, x):
        return self.head(self.f(x))  # (N, 64, 2, 2) -> (N, 10)


class AuxHead(nn.Module):
    """GoogLeNet-style auxiliary head that flattens a 2x2 map; trained with `aux_loss`."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 32, 3, padding=1)
        self.c2 = nn.Conv2d(32, 64, 3, padding=1, stride=2)
        self.aux = nn.Linear(32 * 2 * 2, 10)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = F.relu(self.c1(x))  # (N, 32, 32, 32)
        out = self.fc(F.relu(self.c2(x)).mean((2, 3)))
        if not self.training:
            return out
        return out, self.aux(F.adaptive_avg_pool2d(x, 2).view(x.size(0), -1))


def aux_loss(out, y):
    main, aux = out
    return F.cross_entropy(main, y) + 0.3 * F.cross_entropy(aux, y)


class Lazy(nn.Module):
    def __init__(self):
        super().__init__()
        self.f = nn.Sequential(
            nn.LazyConv2d(32, 3, padding=1), nn.LazyBatchNorm2d(), nn.ReLU(), nn.MaxPool2d(2),
            nn.LazyConv2d(64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.LazyLinear(10),
        )  # fmt: skip

    def forward(self, x):
        return self.f(x)


class SE(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(c, c // 4), nn.Linear(c // 4, c)

    def forward(self, x):
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean((2, 3))))))  # (N, C)
        return x * s[:, :, None, None]


class SENet(nn.Module):
    def __init__(self):
        super().__init__()
        self.f = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), SE(32), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=2, dilation=2), nn.BatchNorm2d(64), nn.ReLU(), SE(64),
        )  # fmt: skip
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.f(x), 1).flatten(1))


class Separable(nn.Module):
    """Depthwise + pointwise, functional pools, log_softmax output, AvgPool2d(4) as the GAP."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 32, 3, padding=1)
        self.dw, self.pw = nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.Conv2d(32, 64, 1)
        self.c3 = nn.Conv2d(64, 64, 3, padding=2, dilation=2)
        self.gap, self.fc = nn.AvgPool2d(4), nn.Linear(64, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.c1(x)), 2)  # 16x16
        x = F.max_pool2d(F.relu(self.pw(self.dw(x))), 2)  # 8x8
        x = F.max_pool2d(F.relu(self.c3(x)), 2)  # 4x4
        return F.log_softmax(self.fc(self.gap(x).squeeze(-1).squeeze(-1)), dim=1)


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.b1, self.b2 = nn.Conv2d(32, 32, 3, padding=1), nn.Conv2d(32, 32, 3, padding=1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = F.relu(x + self.b2(F.relu(self.b1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1))


class Reshape(nn.Module):
    """.reshape instead of .view: works in either layout."""

    def __init__(self):
        super().__init__()
        self.c = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4))
        self.fc = nn.Linear(16 * 8 * 8, 10)

    def forward(self, x):
        return self.fc(self.c(x).reshape(len(x), -1))


def torchvision_resnet18():
    """torchvision's ResNet-18 with 10 classes (over the course's 1M parameters: trains all the
    same)."""
    from torchvision.models import resnet18

    return resnet18(num_classes=10)


def torchvision_mobilenet():
    from torchvision.models import mobilenet_v3_small

    return mobilenet_v3_small(num_classes=10)


class Buggy(nn.Module):
    """A real bug in the student's own line: refused in one line naming it, in every candidate."""

    def __init__(self):
        super().__init__()
        self.c, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(self.c(x).mean((2, 3)))  # 8 features into a 16-input layer


NETWORKS = {
    "flatten-view": (FlattenView, None),
    "helper-view": (HelperView, None),
    "aux-head": (AuxHead, aux_loss),
    "lazy": (Lazy, None),
    "se-blocks": (SENet, None),
    "separable-logsoftmax": (Separable, None),
    "residual": (Residual, None),
    "reshape": (Reshape, None),
    "torchvision-resnet18": (torchvision_resnet18, None),
    "torchvision-mobilenet-v3": (torchvision_mobilenet, None),
    "seed": ("seed", None),
    "buggy": (Buggy, None),
}


def plain_pytorch_trains(factory) -> bool:
    """One fp32 NCHW forward + backward of the network, as plain PyTorch runs it."""
    net = factory().train()
    out = net(torch.randn(4, 3, 32, 32))
    out = out[0] if isinstance(out, tuple) else out
    out.float().sum().backward()
    return True


def main() -> int:
    from cifarkit.base import CifarkitError
    from cifarkit.config import TrainConfig
    from cifarkit.hardware import hardware_string, resolve_device
    from cifarkit.training.trainer import fit

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--limit-train", type=int, default=5000)
    ap.add_argument("--only", nargs="*", help="network names (default: all)")
    ap.add_argument("--out", help="the JSONL file (default: benchmarks/results/...)")
    args = ap.parse_args()
    device = resolve_device("auto")
    out = Path(args.out or f"benchmarks/results/student-networks-{device.type}.jsonl")
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a") as f:
        f.write(json.dumps({"about": hardware_string(device), "torch": torch.__version__}) + "\n")
    for name, (factory, loss_fn) in NETWORKS.items():
        if args.only and name not in args.only:
            continue
        row: dict = {"network": name}
        try:
            row["plain_pytorch"] = factory == "seed" or plain_pytorch_trains(factory)
        except Exception as e:  # noqa: BLE001 - recorded: the promise covers only those that train
            row["plain_pytorch"] = f"{type(e).__name__}: {e}"[:200]
        cfg = TrainConfig(
            epochs=args.epochs,
            limit_train=args.limit_train,
            data=args.data,
            out=tempfile.mkdtemp(prefix=f"student-{name}-"),
            progress=False,
            **({"model": factory} if factory == "seed" else {}),
        )
        start = time.perf_counter()
        try:
            r = fit(cfg, model=None if factory == "seed" else factory, loss_fn=loss_fn)
            row.update(
                trained=True,
                single_view=r.final["single_view_accuracy"],
                precision=r.runtime.precision,
                layout=r.runtime.layout,
                reasons=r.runtime.reasons,
            )
        except CifarkitError as e:
            row.update(trained=False, refused=str(e))
        except Exception as e:  # noqa: BLE001 - a traceback where one line belongs: recorded as such
            row.update(trained=False, crashed=f"{type(e).__name__}: {e}"[:300])
        row["seconds"] = round(time.perf_counter() - start, 1)
        print(json.dumps(row), flush=True)
        with open(out, "a") as f:
            f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
