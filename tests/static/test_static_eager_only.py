"""A static int8 model runs eagerly: torch.export refuses it with what to do (it failed inside a
kernel wrapper with ".numpy() is not supported for tensor subclasses"); eager calls and
torch.compile still give the eager outputs (fullgraph=True: test_static_compile.py)."""
import pytest
import torch
from torch import nn

import mono_quant as mq

# torch < 2.6 has no torch.compiler.is_exporting: export records the compiled op there (compiled.py)
NEEDS_IS_EXPORTING = pytest.mark.skipif(not hasattr(torch.compiler, "is_exporting"),
                                        reason="torch < 2.6: export cannot be told from compile")


def _static_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10)).eval()
    qmodel, _ = mq.quantize(model, "int8", activations="static", calibration=torch.randn(128, 1, 8, 8))
    return qmodel


@NEEDS_IS_EXPORTING
def test_export_names_the_limitation_and_the_way_out():
    qmodel = _static_model()
    x = torch.randn(2, 1, 8, 8)
    with pytest.raises(NotImplementedError, match="static int8 models run eagerly only.*dynamic int8"):
        torch.export.export(qmodel, (x,))
    assert qmodel(x).shape == (2, 10)  # the model still runs


@pytest.mark.parametrize("where", ["root", "child"])
def test_export_onnx_names_the_limitation(tmp_path, where):
    """export_onnx raised torch.onnx's TorchExportError around the refusal; the documented error now."""
    pytest.importorskip("onnxscript")
    qmodel = _static_model() if where == "root" else nn.Sequential(_static_model(), nn.ReLU())
    with pytest.raises(NotImplementedError, match="export_onnx can't write a static int8 model.*dynamic int8"):
        mq.export_onnx(qmodel, (torch.randn(2, 1, 8, 8),), tmp_path / "static.onnx")
    assert not (tmp_path / "static.onnx").exists()


def test_compile_without_fullgraph_runs_it_eagerly():
    qmodel = _static_model()
    x = torch.randn(2, 1, 8, 8)
    torch._dynamo.reset()
    assert torch.equal(torch.compile(qmodel)(x), qmodel(x))
