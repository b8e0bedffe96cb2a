"""The static-quantization reference case: Fashion-MNIST loader and the trained ResNet8 checkpoint."""
import gzip
import sys

import numpy as np
import pytest
import torch

from mono_quant.calibration import Calibrator
from mono_quant.datasets import DatasetMissingError, fashion_mnist_available, load_fashion_mnist

from conftest import DATA, ROOT

sys.path.insert(0, str(ROOT / "benchmarks" / "static"))
from resnet8 import ResNet8, normalize_images  # noqa: E402

CHECKPOINT = DATA / "resnet8_fashion_mnist.safetensors"
needs_dataset = pytest.mark.skipif(not fashion_mnist_available(),
                                   reason="Fashion-MNIST missing: apt-get install -y dataset-fashion-mnist")


# tiny models: one thread avoids OpenMP start-up and spinning on a busy host
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_idx(path, header: bytes, payload: bytes):
    with gzip.open(path, "wb") as f:
        f.write(header + payload)


def test_missing_dataset_says_what_to_install(tmp_path):
    assert not fashion_mnist_available(tmp_path)
    with pytest.raises(DatasetMissingError, match="apt-get install -y dataset-fashion-mnist"):
        load_fashion_mnist("test", directory=tmp_path)
    with pytest.raises(ValueError, match="split"):
        load_fashion_mnist("validation", directory=tmp_path)


@pytest.mark.parametrize("case", ["bad_magic", "short_payload", "wrong_count", "truncated"])
def test_malformed_files_are_rejected(tmp_path, case):
    n = 10000
    header = bytes([0, 0, 8, 3]) + n.to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    payload = bytes(n * 28 * 28)
    if case == "bad_magic":
        header = bytes([0, 0, 9, 3]) + header[4:]
    elif case == "short_payload":
        payload = payload[:-1]
    elif case == "wrong_count":
        header = header[:4] + (n - 1).to_bytes(4, "big") + header[8:]
    elif case == "truncated":
        header, payload = header[:6], b""
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", header, payload)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", bytes([0, 0, 8, 1]) + n.to_bytes(4, "big"), bytes(n))
    with pytest.raises(ValueError, match="t10k-images"):
        load_fashion_mnist("test", directory=tmp_path)


@needs_dataset
def test_loader_reads_debian_files():
    images, labels = load_fashion_mnist("test")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and set(np.unique(labels)) == set(range(10))
    few, _ = load_fashion_mnist("test", limit=5)
    np.testing.assert_array_equal(few, images[:5])


def load_checkpoint():
    from safetensors import safe_open
    from safetensors.torch import load_file

    model = ResNet8().eval()
    model.load_state_dict(load_file(str(CHECKPOINT)))
    with safe_open(str(CHECKPOINT), framework="pt") as f:
        meta = f.metadata()
    return model, meta


def test_checkpoint_is_small_and_loads_strictly():
    model, meta = load_checkpoint()
    assert CHECKPOINT.stat().st_size < 400_000
    assert sum(p.numel() for p in model.parameters()) == 77_658
    assert float(meta["test_top1"]) > 85.0


@needs_dataset
def test_checkpoint_accuracy_and_calibration_on_real_images():
    model, _ = load_checkpoint()
    images, labels = load_fashion_mnist("test", limit=300)
    x = normalize_images(images)
    with torch.no_grad():
        top1 = (model(x).argmax(1).numpy() == labels).mean() * 100
    assert top1 > 80.0  # the full 10k test set gives the figure in the checkpoint's metadata
    cal = Calibrator(model, bins=512)
    assert cal.feed(x, calibration_samples=128) == 128
    ranges = cal.ranges("entropy")
    assert ranges["fc.output"].hi > 0 and ranges["stage3.relu2.output"].lo == -ranges["stage3.relu2.output"].hi
    # the three residual adds are plain `+`: listed, not captured
    assert [op for _, op in cal.uncaptured_ops()] == ["add", "add", "add"]
