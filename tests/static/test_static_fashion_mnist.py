"""Static int8 on the reference case: the trained Fashion-MNIST ResNet8 (issue 12's target,
measured in full by benchmarks/static/bench_static.py; here a fast subset)."""
import sys
import warnings

import pytest
import torch

import mono_quant as mq
from mono_quant.calibration import CalibrationWarning
from mono_quant.datasets import fashion_mnist_available, load_fashion_mnist

from conftest import DATA, ROOT

sys.path.insert(0, str(ROOT / "benchmarks" / "static"))
from resnet8 import ResNet8, normalize_images  # noqa: E402

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.skipif(not fashion_mnist_available(),
                                 reason="Fashion-MNIST missing: apt-get install -y dataset-fashion-mnist")]


@pytest.fixture(scope="module")
def case():
    from safetensors.torch import load_file

    model = ResNet8()
    model.load_state_dict(load_file(str(DATA / "resnet8_fashion_mnist.safetensors")))
    images, labels = load_fashion_mnist("test", limit=5100)  # the small file: 2,000 to score, 100 to calibrate
    images = normalize_images(images)
    test_x, test_y, calib = images[:2000], torch.as_tensor(labels[:2000]), images[5000:5100]
    previous = torch.get_num_threads()  # module scope runs before the one_torch_thread fixture
    torch.set_num_threads(1)
    try:
        return model.eval(), calib, test_x, test_y, correct(model.eval(), test_x, test_y)
    finally:
        torch.set_num_threads(previous)


def correct(model, x, y) -> int:
    """Images classified right (integers: a 0.3-point drop on 2,000 images is 6 images)."""
    with torch.inference_mode():
        return int((model(x).argmax(1) == y).sum())


@pytest.mark.parametrize("observer", ["minmax", "mse", "entropy"])
def test_resnet8_static_int8_keeps_top1_with_100_images(case, observer):
    model, calib, x, y, fp32 = case
    result = mq.quantize(model, "int8", activations="static", calibration=calib, observer=observer)
    assert result.report.capture == "fx" and not result.report.skipped  # all fused, int8 to the head
    assert fp32 - correct(result.model, x, y) <= 0.003 * len(y)  # at most 0.3 points


def test_resnet8_static_model_round_trips(case, tmp_path):
    model, calib, x, _, _ = case
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        result = mq.quantize(model, "int8", activations="static", calibration=calib[:50])
    loaded = mq.load(mq.save(result, tmp_path / "resnet8.static.safetensors"))
    assert torch.equal(loaded(x[:64]), result.model(x[:64]))
