"""The one-call static int8 program with one image's nodes split between threads
(csrc/static_program_split.c: blocks of conv / depthwise output rows, ranges of adds, small
nodes whole) gives the bits of one thread and of the node-by-node path, at every kernel level
(the scalar reference, AVX2 maddubs, AVX-VNNI, AVX-512 VNNI), for batch 1 and for a batch
whose last image is split (3 images on 2 threads), on odd shapes: residual adds, strided and
float-output convs, depthwise, concatenations, broadcasting adds, linear-only models."""
import numpy as np
import pytest
import torch

from mono_quant import _C
from mono_quant.kernels import static_int8 as static_kernels
from mono_quant.static.program import compile_program
from static_helpers import quantized_static
from test_static_program import MODELS as CONV_MODELS
from test_static_program_eltwise import MODELS as ELTWISE_MODELS

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MODELS = {**CONV_MODELS, **ELTWISE_MODELS}


@pytest.fixture(scope="module", params=list(MODELS))
def compiled(request):
    cls, shape = MODELS[request.param]
    model = quantized_static(cls, shape, seed=3)
    run = compile_program(model)
    assert run is not None, "the whole model should run as one program"
    return model, run, shape


def inputs(shape, batch):
    return torch.randn(batch, *shape, generator=torch.Generator().manual_seed(7 + batch))


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("batch", [1, 3])
def test_split_images_give_the_bits_of_one_thread(kernel_isa, compiled, batch, threads):
    _, run, shape = compiled
    x = inputs(shape, batch).numpy()
    alone = static_kernels.static_program_run(run.handle, x, 1, split="images")
    other = inputs(shape, batch + 10).numpy()
    for split in ("nodes", "auto", "images"):  # nodes: every node in as many pieces as it has
        # (a call on other inputs first: freed and reused scratch memory holds no right answers)
        static_kernels.static_program_run(run.handle, other, threads, split=split)
        got = static_kernels.static_program_run(run.handle, x, threads, split=split)
        assert got.dtype == alone.dtype and got.shape == alone.shape
        assert np.array_equal(got, alone), split


@pytest.mark.parametrize("batch", [1, 3])
def test_split_program_matches_node_by_node(isa, compiled, batch, monkeypatch):
    """Through the model: the program forced to split every node on 2 threads, against the
    model run node by node (each layer's own kernels, one thread)."""
    model, _, shape = compiled
    x = inputs(shape, batch)
    with torch.inference_mode():
        model.run_as_program = False
        ref = model(x)
        model.run_as_program = True
        run_plain = static_kernels.static_program_run
        monkeypatch.setattr(static_kernels, "static_program_run",
                            lambda handle, xs, nthreads, **kw: run_plain(handle, xs, 2, split="nodes", **kw))
        got = model(x)
    assert model._compiled, "the program ran"
    assert torch.equal(got, ref)


def test_split_with_per_call_threads_backend(compiled):
    """With threads started per call (each takes one contiguous share of the pieces, so the
    second waits on the first's) the split still finishes and gives the same bits."""
    _, run, shape = compiled
    x = inputs(shape, 1).numpy()
    alone = static_kernels.static_program_run(run.handle, x, 1)
    previous = _C.set_threading_backend("pthreads")
    try:
        got = static_kernels.static_program_run(run.handle, x, 3, split="nodes")
    finally:
        _C.set_threading_backend(previous)
    assert np.array_equal(got, alone)


def test_repeated_auto_calls_keep_the_bits(compiled):
    """'auto' may run a call split or, after calls that gained too little, on one thread:
    the bits never change."""
    _, run, shape = compiled
    x = inputs(shape, 1).numpy()
    alone = static_kernels.static_program_run(run.handle, x, 1)
    for _ in range(20):
        assert np.array_equal(static_kernels.static_program_run(run.handle, x, 2), alone)


def test_unknown_split_is_refused(compiled):
    _, run, shape = compiled
    with pytest.raises(ValueError, match="split must be 'auto', 'images' or 'nodes'"):
        static_kernels.static_program_run(run.handle, inputs(shape, 1).numpy(), 2, split="rows")


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("batch", [0, 1, 3])
def test_nchw_output_is_the_nhwc_output_transposed(compiled, batch, threads):
    """nchw=True (what the model asks for): the last node's NHWC output transposed in C, every
    output rank (a conv's image, a pool's [b, c, 1, 1], a linear's rows)."""
    _, run, shape = compiled
    x = inputs(shape, batch).numpy()
    nhwc = static_kernels.static_program_run(run.handle, x, threads)
    got = static_kernels.static_program_run(run.handle, x, threads, nchw=True)
    assert got.flags.c_contiguous and got.dtype == np.float32
    assert np.array_equal(got, nhwc.transpose(0, 3, 1, 2))
