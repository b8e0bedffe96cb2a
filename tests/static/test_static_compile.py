"""A static int8 model under torch.compile(fullgraph=True): one ``mono_quant::static_forward``
op in the graph (it failed on torch's graph-break error), giving eager's bits for every input
it is fed (a graph that ignored its input would give the first one's), at any batch, with
static and dynamic shapes; the program path, the op-by-op path and the per-layer fallback."""
import copy

import pytest
import torch
from torch import nn

import mono_quant as mq

# torch < 2.6 has no torch.compiler.is_exporting: export records the compiled op there (compiled.py)
NEEDS_IS_EXPORTING = pytest.mark.skipif(not hasattr(torch.compiler, "is_exporting"),
                                        reason="torch < 2.6: export cannot be told from compile")
from static_helpers import Branchy


def _quantized(model, calibration):
    torch.manual_seed(0)
    qmodel, _ = mq.quantize(model.eval(), "int8", activations="static", calibration=calibration)
    return qmodel


def _classifier():
    torch.manual_seed(0)
    return _quantized(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10)),
                      torch.randn(128, 1, 8, 8))


def _conv_stack():  # a float NCHW output (the program's is a channels-last view)
    torch.manual_seed(0)
    return _quantized(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3)),
                      torch.randn(128, 3, 10, 10))


def _check_compiled_equals_eager(fn, eager, shapes, dynamic):
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, dynamic=dynamic)
    outputs = []
    for i, shape in enumerate(shapes):
        x = torch.randn(shape, generator=torch.Generator().manual_seed(i))
        y = compiled(x)
        assert torch.equal(y, eager(x)), f"input {i} {shape}"
        outputs.append(y)
    # the graph follows its input: two inputs of one shape, two outputs
    assert not torch.equal(outputs[0], outputs[1])
    return outputs


MODELS = {"conv-stack": (_conv_stack, (3, 10, 10)), "classifier": (_classifier, (1, 8, 8))}


@pytest.mark.parametrize("dynamic", [None, True, False])
@pytest.mark.parametrize("as_program", [True, False], ids=["program", "op-by-op"])
@pytest.mark.parametrize("name", MODELS)
def test_fullgraph_compile_gives_eager_bits(name, as_program, dynamic):
    make, image = MODELS[name]
    qmodel = make()
    qmodel.run_as_program, qmodel._compiled = as_program, None
    _check_compiled_equals_eager(qmodel, qmodel, [(2, *image), (2, *image), (5, *image), (1, *image)], dynamic)
    # the eager route the op ran (the classifier's Flatten is a float op: op by op always)
    assert bool(qmodel._compiled) == (as_program and name == "conv-stack")
    assert as_program or qmodel._compiled is None


def test_compiled_graph_around_the_model_gets_its_float_nchw_output():
    qmodel = _conv_stack()
    outputs = _check_compiled_equals_eager(lambda x: torch.relu(qmodel(x)) * 2 + 1,
                                           lambda x: torch.relu(qmodel(x)) * 2 + 1,
                                           [(2, 3, 10, 10), (2, 3, 10, 10), (3, 3, 10, 10)], None)
    assert outputs[2].shape == (3, 4, 8, 8)


def test_per_layer_fallback_compiles_with_fullgraph():
    qmodel = _quantized(Branchy(), torch.randn(128, 3, 8, 8))
    assert qmodel.conv.__class__.__name__ == "PerLayerStatic"
    # the model's own data-dependent branch stays a graph break: compile the quantized layers alone
    _check_compiled_equals_eager(qmodel.conv, qmodel.conv, [(2, 3, 8, 8), (2, 3, 8, 8)], None)


def test_an_input_that_requires_grad_gives_what_eager_gives():
    qmodel = _conv_stack()
    x = torch.randn(2, 3, 10, 10, requires_grad=True)
    torch._dynamo.reset()
    y = torch.compile(qmodel, fullgraph=True)(x)
    assert torch.equal(y, qmodel(x)) and not y.requires_grad and not qmodel(x).requires_grad


def test_a_copy_runs_its_own_weights():
    qmodel = _classifier()
    twin = copy.deepcopy(qmodel)
    first = twin.layers[next(iter(twin.layers))]
    first.bias.add_(1.0)  # the twin's first layer only
    first._derive()
    x = torch.randn(2, 1, 8, 8)
    torch._dynamo.reset()
    assert torch.equal(torch.compile(twin, fullgraph=True)(x), twin(x))
    assert torch.equal(torch.compile(qmodel, fullgraph=True)(x), qmodel(x))
    assert not torch.equal(twin(x), qmodel(x))


def test_two_inputs_under_fullgraph_say_what_to_do():
    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)

        def forward(self, x, y):
            return self.a(x) + self.b(y)

    torch.manual_seed(0)
    qmodel, _ = mq.quantize(TwoInputs().eval(), "int8", activations="static",
                            calibration=lambda m: [m(torch.randn(4, 8), torch.randn(4, 8)) for _ in range(32)])
    x, y = torch.randn(2, 8), torch.randn(2, 8)
    torch._dynamo.reset()
    with pytest.raises(Exception, match="compile without fullgraph=True"):
        torch.compile(qmodel, fullgraph=True)(x, y)
    torch._dynamo.reset()
    with pytest.warns(UserWarning):  # the graph break, as meant
        assert torch.equal(torch.compile(qmodel)(x, y), qmodel(x, y))


def test_two_threads_call_one_compiled_model():
    """No state is shared between the op's calls: a global 'inside the op' counter once made
    dynamo guard on it, so a thread calling the compiled model while another ran the op
    recompiled, and under fullgraph=True failed on torch's error."""
    import threading

    qmodel = _classifier()
    torch._dynamo.reset()
    compiled = torch.compile(qmodel, fullgraph=True)
    inputs = [torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    expected = [qmodel(x) for x in inputs]
    compiled(inputs[0])  # compiled once, before the threads
    errors = []

    def run(i):
        try:
            for _ in range(60):
                assert torch.equal(compiled(inputs[i]), expected[i])
        except BaseException as error:  # noqa: BLE001  (reported below)
            errors.append(repr(error))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


@NEEDS_IS_EXPORTING
def test_strict_export_gives_the_refusal():
    """torch.export strict=True sees a plain tensor: the refusal comes before the fast path
    (it failed on torch's 'torch.* op returned non-Tensor')."""
    qmodel = _classifier()
    with pytest.raises(Exception, match="static int8 models run eagerly only"):
        torch.export.export(qmodel, (torch.randn(2, 1, 8, 8),), strict=True)


def test_a_key_from_another_process_finds_no_model():
    # a model's key in the op is random, not a count: a graph that outlives its process (a program
    # exported on torch < 2.6, which has no is_exporting; a compile cache) never runs this
    # process's model of the same number (with a count, key 1 named every process's first model)
    a, b = _classifier(), _classifier()
    assert a._static_op_key != b._static_op_key
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(torch.ops.mono_quant.static_forward(x, a._static_op_key), a(x))
    with pytest.raises(RuntimeError, match=r"static int8 model 1 no longer exists .* or runs in another process"):
        torch.ops.mono_quant.static_forward(x, 1)
