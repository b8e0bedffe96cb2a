"""The torch.library ops route (formats/traced_forward.py, kernels/torch_library.py): same results as the eager direct calls,
graph capture (torch.compile fullgraph, torch.export, torch.jit.trace) and autograd to
the input through every quantized layer."""
import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mono_quant as mq
from mono_quant.formats import traced_forward as torch_ops
from mono_quant.modules.conv import QuantizedConv2d
from mono_quant.modules.embedding import QuantizedEmbedding
from mono_quant.modules.linear import QuantizedLinear

LINEAR_CASES = [("int8", "dynamic"), ("int8", None), ("uint8", None), ("int4", None), ("fp16", None), ("bf16", None)]


def _quantized(module, dtype, activations=None, **kw):
    if dtype in ("int8", "uint8"):
        kw["activations"] = activations
    return mq.quantize(nn.Sequential(module), dtype=dtype, **kw).model[0]


@pytest.mark.parametrize("dtype,activations", LINEAR_CASES)
@pytest.mark.parametrize("shape", [(3, 40), (2, 5, 40), (70, 40)], ids=["2d", "3d", "70rows"])
def test_linear_op_route_is_bit_identical_to_eager(isa, dtype, activations, shape):
    torch.manual_seed(0)
    q = _quantized(nn.Linear(40, 33), dtype, activations, **({"group_size": 32} if dtype == "int4" else {}))
    x = torch.randn(shape)
    with torch.no_grad():
        assert torch.equal(torch_ops.linear_forward(q, x), q(x))
        if dtype != "uint8":
            xb = x.bfloat16()
            assert torch.equal(torch_ops.linear_forward(q, xb), q(xb))


CONV_CASES = [dict(kernel_size=3, padding=1), dict(kernel_size=3, stride=2, groups=2),
              dict(kernel_size=1), dict(kernel_size=3, padding=1, padding_mode="reflect"),
              dict(kernel_size=3, padding="same"), dict(kernel_size=3, groups=8)]


@pytest.mark.parametrize("activations", ["dynamic", None])
@pytest.mark.parametrize("conv", CONV_CASES, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_conv_op_route_is_bit_identical_to_eager(activations, conv):
    torch.manual_seed(0)
    q = _quantized(nn.Conv2d(8, 32, **conv), "int8", activations)
    for x in (torch.randn(2, 8, 20, 20), torch.randn(1, 8, 5, 5)):  # packed and dequantized paths
        with torch.no_grad():
            assert torch.equal(torch_ops.conv2d_forward(q, x), q(x))


@pytest.mark.parametrize("dtype", ["int8", "int4", "fp16"])
def test_embedding_op_route_is_bit_identical_to_eager(dtype):
    torch.manual_seed(0)
    q = mq.quantize(nn.Sequential(nn.Embedding(50, 64)), dtype=dtype, embeddings=True).model[0]
    idx = torch.randint(0, 50, (3, 7))
    assert torch.equal(torch_ops.embedding_forward(q, idx), q(idx))
    if dtype != "fp16":
        with pytest.raises(IndexError, match="out of range"):
            torch.ops.mono_quant.embedding_lookup(torch.tensor([50]), q.weight_qdata, q.weight_scale,
                                                  q.weight_zero_point, 50, 64, 0)


class _Mixed(nn.Module):
    """One of each op: int8 dynamic and weight-only convs, int8 / int4 linears, an int8 embedding."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = _quantized(nn.Conv2d(8, 32, 3, padding=1), "int8", "dynamic")  # packed
        self.conv2 = _quantized(nn.Conv2d(32, 16, 3, stride=2), "int8", None)  # dequantized
        self.fc1 = _quantized(nn.Linear(16 * 7 * 7, 64), "int8", "dynamic")
        self.fc2 = _quantized(nn.Linear(64, 64), "int4", None, group_size=32)
        self.fc3 = _quantized(nn.Linear(64, 10), "int8", None)
        self.emb = mq.quantize(nn.Sequential(nn.Embedding(20, 64)), embeddings=True).model[0]

    def forward(self, x, idx):
        h = F.relu(self.conv2(F.relu(self.conv1(x))))
        h = F.relu(self.fc2(F.relu(self.fc1(h.flatten(1))) + self.emb(idx)))
        return self.fc3(h.to(self.fc3.weight.dtype))  # as T5 does: .weight read inside the graph


def _inputs(seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 8, 16, 16, generator=g), torch.randint(0, 20, (2,), generator=g)


def test_compile_fullgraph_matches_eager():
    # aot_eager: dynamo's capture (any graph break raises) and AOTAutograd on the fake
    # implementations, without inductor's C++ code generation (30 s for this model, cold)
    model = _Mixed().eval()
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        for seed in (0, 1):
            assert torch.allclose(compiled(*_inputs(seed)), model(*_inputs(seed)), rtol=1e-5, atol=1e-5)


def test_inductor_compiles_quantized_layers():
    torch.manual_seed(0)
    model = nn.Sequential(_quantized(nn.Linear(32, 32), "int8", "dynamic"),
                          _quantized(nn.Linear(32, 8), "int4", group_size=32))  # no pointwise op: no C++ to build
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(3, 32)
    with torch.no_grad():
        assert torch.equal(compiled(x), model(x))


def test_export_captures_the_ops_and_follows_its_input():
    model = _Mixed().eval()
    program = torch.export.export(model, _inputs(0))
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert {"mono_quant.conv2d_int8.default", "mono_quant.linear_int8.default", "mono_quant.int4_linear.default",
            "mono_quant.embedding_lookup.default"} <= targets
    with torch.no_grad():
        assert torch.equal(program.module()(*_inputs(1)), model(*_inputs(1)))


def test_jit_trace_records_the_ops_instead_of_a_constant():
    model = _Mixed().eval()
    with torch.no_grad():
        traced = torch.jit.trace(model, _inputs(0), check_trace=False)
        assert "mono_quant::linear_int8" in str(traced.inlined_graph)
        y1, y2 = traced(*_inputs(1)), traced(*_inputs(2))
        assert not torch.equal(y1, y2)
        assert torch.equal(y1, model(*_inputs(1)))


@pytest.mark.parametrize("dtype,activations", [c for c in LINEAR_CASES if c[0] != "uint8"])
def test_linear_backward_to_input_uses_the_dequantized_weight(dtype, activations):
    torch.manual_seed(0)
    q = _quantized(nn.Linear(40, 33), dtype, activations)
    x = torch.randn(2, 3, 40, requires_grad=True)
    y = q(x)
    assert y.requires_grad  # (int4 used to return a detached output: zero gradient upstream)
    g = torch.randn_like(y)
    y.backward(g)
    w = q.dequantized_weight(torch.float32)
    assert torch.allclose(x.grad, g @ w, rtol=1e-5, atol=1e-5)
    assert not any(b.requires_grad for b in q.buffers())


def test_bias_is_a_frozen_parameter_that_can_opt_in():
    torch.manual_seed(0)
    qmodel, _ = mq.quantize(nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4)), dtype="int4",
                            group_size=32)
    params = dict(qmodel.named_parameters())
    assert set(params) == {"0.bias", "2.bias"} and not any(p.requires_grad for p in params.values())
    assert set(qmodel.state_dict()) == {"0.weight_qdata", "0.weight_scale", "0.weight_zero_point", "0.bias",
                                        "2.weight_qdata", "2.weight_scale", "2.weight_zero_point", "2.bias"}
    qmodel[2].bias.requires_grad_(True)
    opt = torch.optim.SGD(qmodel.parameters(), lr=0.1)
    x = torch.randn(5, 16)
    y = qmodel(x)
    y.sum().backward()
    assert torch.allclose(qmodel[2].bias.grad, torch.full((4,), 5.0))
    before = qmodel(x).detach()
    opt.step()
    assert torch.allclose(qmodel(x).detach(), before - 0.5, atol=1e-5)  # the updated bias is used


@pytest.mark.parametrize("activations", ["dynamic", None])
@pytest.mark.parametrize("conv", CONV_CASES[:4], ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_conv_backward_to_input_uses_the_dequantized_weight(activations, conv):
    torch.manual_seed(0)
    float_conv = nn.Conv2d(8, 32, **conv)
    q = _quantized(float_conv, "int8", activations)
    ref = copy.deepcopy(float_conv)
    ref.weight.data = q.dequantized_weight(torch.float32)
    x = torch.randn(2, 8, 12, 12, requires_grad=True)
    xr = x.detach().clone().requires_grad_(True)
    y = q(x)
    g = torch.randn_like(y)
    y.backward(g)
    ref(xr).backward(g)
    assert torch.allclose(x.grad, xr.grad, rtol=1e-4, atol=1e-5)


def test_a_trainable_adapter_before_an_int4_layer_learns():
    torch.manual_seed(0)
    q = _quantized(nn.Linear(64, 16), "int4", group_size=32)
    adapter = nn.Linear(64, 64)
    opt = torch.optim.Adam(adapter.parameters(), lr=1e-2)
    x, target = torch.randn(32, 64), torch.randn(32, 16)
    losses = []
    for _ in range(20):
        loss = F.mse_loss(q(adapter(x)), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_compiled_training_through_frozen_quantized_layers_matches_eager():
    torch.manual_seed(0)
    adapter = nn.Linear(64, 64)
    model = nn.Sequential(adapter, nn.ReLU(), _quantized(nn.Linear(64, 16), "int4", group_size=32))
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    x, target = torch.randn(8, 64), torch.randn(8, 16)
    grads = []
    for run in (model, compiled):
        adapter.zero_grad()
        F.mse_loss(run(x), target).backward()
        grads.append(adapter.weight.grad.clone())
    assert grads[0].abs().sum() > 0 and torch.allclose(grads[0], grads[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype,activations", LINEAR_CASES)
def test_jit_trace_of_a_forward_reading_the_weight(dtype, activations):
    # int8's unpacking took a dtype view, which torch.jit.trace's alias analysis rejects (INTERNAL ASSERT)
    class ReadsWeight(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(40, 33)

        def forward(self, x):
            return self.fc(x) + x[..., :33] @ self.fc.weight[:, :33].t()

    torch.manual_seed(0)
    kw = {"activations": activations} if dtype in ("int8", "uint8") else {}
    q = mq.quantize(ReadsWeight().eval(), dtype=dtype, **kw).model
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (the weight is a constant of the graph: a tracer warning)
        traced = torch.jit.trace(q, torch.randn(2, 40), check_trace=False)
        x = torch.randn(5, 40)
        assert torch.equal(traced(x), q(x))


def test_jit_trace_of_a_conv_says_its_route_follows_the_example_size():
    # the route is chosen from the image size in Python: the traced graph keeps the example's
    torch.manual_seed(0)
    q = _quantized(nn.Conv2d(16, 8, 3, padding=1), "int8", "dynamic")
    with torch.no_grad(), pytest.warns(UserWarning, match=r"keeps the kernel route chosen for the example's size "
                                                            r"\(2, 16, 8, 8\)"):
        traced = torch.jit.trace(q, torch.randn(2, 16, 8, 8), check_trace=False)
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        assert torch.equal(traced(x), q(x))  # at the traced size: eager's bits


def test_jit_trace_with_an_empty_example_is_refused():
    torch.manual_seed(0)
    q = _quantized(nn.Linear(40, 33), "int8", "dynamic")
    with torch.no_grad(), pytest.raises(ValueError, match="empty example"):
        torch.jit.trace(q, torch.randn(0, 40), check_trace=False)


def test_uint8_model_under_torch_compile_gives_eager_bits():
    torch.manual_seed(0)
    model = mq.quantize(nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4)), dtype="uint8",
                        activations=None).model
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    for rows in (2, 200):
        x = torch.randn(rows, 32)
        with torch.no_grad():
            assert torch.equal(compiled(x), model(x))


def test_uint8_layer_trains_under_torch_compile_with_aot_autograd():
    # the op's backward is traced by AOTAutograd on tensor subclasses: it must call ops, not _C on .numpy()
    torch.manual_seed(0)
    model = mq.quantize(nn.Sequential(nn.Linear(40, 20)), dtype="uint8", activations=None).model
    compiled = torch.compile(model, backend="aot_eager")
    x = torch.randn(3, 40, requires_grad=True)
    compiled(x).sum().backward()
    w = model[0].dequantized_weight(torch.float32)
    assert torch.allclose(x.grad, torch.ones(3, 20) @ w, rtol=1e-5, atol=1e-5)
