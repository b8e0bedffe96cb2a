"""fp16 / bf16 Linear layers on the C kernel (formats/cast.py): which inputs take it, the
same results as the kernel and close to torch's product, the row rule's torch path,
autograd and graph capture through the ``mono_quant::half_linear`` op."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mono_quant as mq
from mono_quant import _C
from mono_quant.formats import cast
from mono_quant.formats.traced_forward import linear_forward
from mono_quant.kernels import SETTINGS
from mono_quant.kernels.fp16 import PANEL_MAX_ROWS, half_linear
from mono_quant.kernels.row_rules import HALF_AMX_MIN_ROWS


def quantized_linear(dtype, in_features=37, out_features=23, bias=True):
    torch.manual_seed(0)
    return mq.quantize(nn.Sequential(nn.Linear(in_features, out_features, bias=bias)), dtype=dtype).model[0]


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
@pytest.mark.parametrize("shape", [(1, 37), (5, 37), (2, 3, 37), (37,)], ids=["row", "rows", "3d", "1d"])
def test_float32_inputs_run_the_kernel(isa, dtype, shape):
    q = quantized_linear(dtype)
    x = torch.randn(shape)
    w = q._buffers["weight"]
    assert cast.takes_half_kernel(x, w, isa) == (isa != "scalar")
    with torch.no_grad():
        y = q(x)
    assert y.shape == (*shape[:-1], 23) and y.dtype == torch.float32
    if isa != "scalar":
        assert torch.equal(y, half_linear(x.reshape(-1, 37), w, q.bias).reshape(y.shape))
    torch.testing.assert_close(y, F.linear(x, w.float(), q.bias), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_rows_past_the_rule_take_torchs_op(isa, dtype, monkeypatch):
    q = quantized_linear(dtype)
    x = torch.randn(6, 37)
    monkeypatch.setitem(cast.KERNEL_MAX_ROWS, isa, 5)
    monkeypatch.setitem(PANEL_MAX_ROWS, isa, 0)  # past 5 rows: torch's op, no panel path
    assert not cast.takes_half_kernel(x, q._buffers["weight"], isa)
    with torch.no_grad():
        assert torch.equal(q(x), F.linear(x, q._buffers["weight"].float(), q.bias))
        assert torch.equal(q(x[:5]), half_linear(x[:5], q._buffers["weight"], q.bias)) or isa == "scalar"


@pytest.mark.parametrize("x_dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_other_input_dtypes_keep_torchs_op(x_dtype):
    q = quantized_linear("fp16")
    x = torch.randn(4, 37).to(x_dtype)
    assert not cast.takes_half_kernel(x, q._buffers["weight"], SETTINGS.isa)
    with torch.no_grad():
        y = q(x)
    assert y.dtype == x_dtype
    torch.testing.assert_close(y.double(), F.linear(x.double(), q._buffers["weight"].double(), q.bias.double()),
                               rtol=2e-2, atol=2e-2)


def test_no_bias_and_empty_inputs():
    q = quantized_linear("fp16", bias=False)
    x = torch.randn(3, 37)
    with torch.no_grad():
        torch.testing.assert_close(q(x), F.linear(x, q._buffers["weight"].float()), rtol=1e-5, atol=1e-5)
        assert q(torch.randn(0, 37)).shape == (0, 23)


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_autograd_to_the_input_and_bias(dtype):
    q = quantized_linear(dtype)
    q.bias.requires_grad_(True)
    x = torch.randn(2, 4, 37, requires_grad=True)
    q(x).square().sum().backward()
    x_ref = x.detach().clone().requires_grad_(True)
    b_ref = q.bias.detach().clone().requires_grad_(True)
    F.linear(x_ref, q._buffers["weight"].float(), b_ref).square().sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(q.bias.grad, b_ref.grad, rtol=1e-4, atol=1e-4)


def test_op_route_and_graph_capture_match_eager():
    torch.manual_seed(0)
    model = mq.quantize(nn.Sequential(nn.Linear(40, 64), nn.ReLU(), nn.Linear(64, 16)), dtype="fp16").model
    x = torch.randn(3, 40)
    with torch.no_grad():
        eager = model(x)
        assert torch.equal(linear_forward(model[0], x), model[0](x))
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
        assert torch.equal(compiled(x), eager)
        program = torch.export.export(model, (x,))
    ops = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert "mono_quant.half_linear.default" in ops or SETTINGS.isa == "scalar"
    assert torch.equal(program.module()(x), eager)


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_traced_graph_applies_the_row_rule_at_run_time(isa, dtype, monkeypatch):
    """torch.export with a dynamic row count: the row rule is the op's, on the real rows (a
    branch on the symbolic count would add a guard, and refuse the dynamic range); both sides
    of it give eager's bits."""
    q = quantized_linear(dtype)
    monkeypatch.setitem(cast.KERNEL_MAX_ROWS, isa, 5)
    monkeypatch.setitem(PANEL_MAX_ROWS, isa, 0)  # past 5 rows: torch's op, no panel path
    rows = torch.export.Dim("rows", min=1, max=4096)
    ep = torch.export.export(q, (torch.randn(8, 37),), dynamic_shapes=({0: rows},))
    for m in (3, 5, 6, 40):
        x = torch.randn(m, 37)
        with torch.no_grad():
            assert torch.equal(ep.module()(x), q(x)), m


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_rows_past_the_rule_same_bits_eager_traced_and_autograd(isa, dtype, monkeypatch):
    """A 3-D input that is not contiguous, past the row rule: eager computes on the rows as 2-D,
    as the op of a traced graph and of the autograd path does (torch's linear of such an input
    adds the bias apart: other bits)."""
    q = quantized_linear(dtype, in_features=384, out_features=64)
    monkeypatch.setitem(cast.KERNEL_MAX_ROWS, isa, 5)
    monkeypatch.setitem(PANEL_MAX_ROWS, isa, 0)  # past 5 rows: torch's op, no panel path
    x = torch.randn(100, 2, 384).transpose(0, 1)  # 200 rows
    with torch.no_grad():
        eager = q(x)
        exported = torch.export.export(q, (x,)).module()(x)
    assert torch.equal(eager, exported)
    assert torch.equal(eager, q(x.clone().requires_grad_(True)).detach())


# ---- the panel path (kernels/row_rules.py HALF_PANEL_MAX_ROWS): rows past the tiles' rule ----------

@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_panel_rows_same_bits_eager_traced_threads(isa, dtype, monkeypatch):
    """Rows 6-50 on the panel path (where the level has one; elsewhere the tiles): eager and the
    op of an exported graph with dynamic rows give the C call's bits, close to torch's product;
    3 rows keep the tiles and 60 take torch's op."""
    q = quantized_linear(dtype, in_features=70, out_features=37)  # K not a multiple of 4, a panel tail
    monkeypatch.setitem(cast.KERNEL_MAX_ROWS, isa, 5)
    monkeypatch.setitem(PANEL_MAX_ROWS, isa, 50)
    monkeypatch.setitem(HALF_AMX_MIN_ROWS, isa, 1 << 62)  # AMX-BF16 rows: test_amx_h16.py
    w = q._buffers["weight"]
    rows = torch.export.Dim("rows", min=1, max=4096)
    ep = torch.export.export(q, (torch.randn(8, 70),), dynamic_shapes=({0: rows},))
    for m in (3, 6, 33, 50, 60):
        x = torch.randn(m, 70)
        with torch.no_grad():
            y = q(x)
            assert torch.equal(ep.module()(x), y), m
        if m == 60:
            assert torch.equal(y, F.linear(x, w.float(), q.bias)), m
        else:
            panels = m > 5
            want = torch.from_numpy(_C.h16_linear(x.numpy(), w.view(torch.int16).numpy() if dtype == "bf16"
                                                  else w.numpy(), dtype == "bf16", bias=q.bias.numpy(),
                                                  nthreads=1, panels=panels))
            assert torch.equal(y, want), m
        exact = x.double() @ w.double().T + q.bias.double()
        torch.testing.assert_close(y.double(), exact, rtol=1e-5, atol=1e-5)
