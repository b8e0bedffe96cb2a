"""torchvision's stochastic depth (EfficientNet's and ConvNeXt's residual blocks) in an eval model returns
its input: the static program runs none, so the model saves and loads (the call, fx.wrap'ed, was a float
op whose function no file may name: ``mq.save`` refused EfficientNet-B0).  torchvision is no test
dependency: the function here is its rule under its module and name, wrapped for fx as torchvision does."""
import warnings

import pytest
import torch
import torch.fx
from torch import nn

import mono_quant as mq
from mono_quant.calibration.calibrator import CalibrationWarning
from mono_quant.static.capture import _stochastic_depth_input


def stochastic_depth(input, p: float, mode: str, training: bool = True):
    """torchvision.ops.stochastic_depth's eval rule (training mode is not tested here)."""
    if not training or p == 0.0:
        return input
    return input * (torch.rand(input.shape[0], *[1] * (input.dim() - 1)) >= p) / (1.0 - p)


stochastic_depth.__module__ = "torchvision.ops.stochastic_depth"
torch.fx.wrap("stochastic_depth")


def my_identity(x):
    return x


torch.fx.wrap("my_identity")


class Block(nn.Module):
    def __init__(self, p=0.2, mode="row", leaf="stochastic_depth", keyword=False):
        super().__init__()
        self.stem, self.conv = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)
        self.p, self.mode, self.leaf, self.keyword = p, mode, leaf, keyword

    def forward(self, x):
        y = torch.relu(self.stem(x))
        if self.leaf == "my_identity":  # (by name: fx patches the globals while it traces)
            z = my_identity(self.conv(y))
        elif self.keyword:  # (the input too: fx records every keyword)
            z = stochastic_depth(input=self.conv(y), p=self.p, mode=self.mode, training=self.training)
        else:
            z = stochastic_depth(self.conv(y), self.p, self.mode, self.training)
        return self.head((y + z).mean((2, 3)))


def _static(model):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        return mq.quantize(model.eval(), "int8", activations="static", calibration=torch.randn(32, 3, 8, 8))


@pytest.mark.parametrize("keyword", [False, True], ids=["positional", "keywords"])
@pytest.mark.parametrize("p", [0.2, 0.0])
def test_an_eval_models_stochastic_depth_is_its_input_and_saves(tmp_path, keyword, p):
    torch.manual_seed(1)
    model = Block(p=p, keyword=keyword).eval()
    result = _static(model)
    assert not any("stochastic_depth" in why for _, why in result.report.not_fused)
    x = torch.randn(2, 3, 8, 8)
    with torch.inference_mode():
        y = result.model(x)
        torch.testing.assert_close(y, model(x), rtol=0.05, atol=0.05)
    mq.save(result, tmp_path / "m.safetensors")
    loaded = mq.load(tmp_path / "m.safetensors")
    with torch.inference_mode():
        assert torch.equal(loaded(x), y)


def test_only_torchvisions_function_by_module_and_name_with_arguments_it_takes():
    graph = torch.fx.symbolic_trace(Block().eval()).graph
    node = next(n for n in graph.nodes if n.op == "call_function" and n.target is stochastic_depth)
    assert _stochastic_depth_input(node) is node.args[0]
    for args, kwargs in [((node.args[0], 0.2, "row", True), {}),  # training: runs torchvision's noise
                         ((node.args[0], 1.5, "row", False), {}),  # torchvision raises: the float op raises too
                         ((node.args[0], 0.2, "rows", False), {}),
                         ((node.args[0], 0.2, "row"), {}),  # training defaults to True
                         ((node.args[0], 0.2, "row"), {"training": False, "inplace": True})]:
        node.args, node.kwargs = args, kwargs
        assert _stochastic_depth_input(node) is None, (args, kwargs)
    x = node.args[0]
    node.args, node.kwargs = (x,), {"p": 0.0, "mode": "batch"}
    assert _stochastic_depth_input(node) is x
    node.args, node.kwargs = (), {"input": x, "p": 0.2, "mode": "row", "training": False}
    assert _stochastic_depth_input(node) is x
    node.args, node.kwargs = (x,), {"input": x, "p": 0.2, "mode": "row", "training": False}  # (input twice)
    assert _stochastic_depth_input(node) is None


def test_another_wrapped_function_still_refuses_to_save_naming_it(tmp_path):
    result = _static(Block(leaf="my_identity"))
    with pytest.raises(TypeError, match="my_identity.*allow-list"):
        mq.save(result, tmp_path / "m.safetensors")
