"""The real CIFAR-10 copy in ../shared: it loads completely, and the seed network learns from it."""
import os

import pytest

from cifarkit import TrainConfig, fit, load_cifar10
from conftest import SHARED_ARCHIVE

pytestmark = pytest.mark.skipif(not SHARED_ARCHIVE.exists(), reason=f"{SHARED_ARCHIVE} not present")


@pytest.fixture(scope="module")
def cifar():
    # The user-level cache (not the per-test one): a second run of the suite skips the ~15 s decode.
    saved = os.environ.pop("CIFARKIT_CACHE", None)
    try:
        return load_cifar10(SHARED_ARCHIVE, progress=False)
    finally:
        if saved is not None:
            os.environ["CIFARKIT_CACHE"] = saved


def test_full_copy_loads(cifar):
    assert cifar.train_images.shape == (50000, 3, 32, 32) and cifar.test_images.shape == (10000, 3, 32, 32)
    assert cifar.train_labels.bincount().tolist() == [5000] * 10
    assert cifar.test_labels.bincount().tolist() == [1000] * 10
    mean = (cifar.train_images[:, 0].float() / 255).mean().item()
    assert abs(mean - 0.4913) < 0.001  # the red-channel mean stated in ../shared/data/README.md


def test_seed_network_beats_chance_clearly(cifar, tmp_path):
    cfg = TrainConfig(model="seed", epochs=2, limit_train=4000, limit_test=2000, batch_size=64, lr=0.1,
                      progress=False, out=str(tmp_path / "run"), tta="none")
    result = fit(cfg, data=cifar)
    assert result.final["final_test_total"] == 2000
    assert result.final["final_test_accuracy"] > 35.0  # chance is 10%
