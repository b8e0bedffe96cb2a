"""_C.packed_dequantize (csrc/packed_dequantize.c): a packed int8 weight straight to float32 rows in
torch's order, against its pure-torch twin (kernels.reference) on odd shapes, extremes and bad
input, and against the layer's own dequantized weight."""
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import mono_quant as mq
from mono_quant import _C, kernels
from mono_quant.kernels import reference
from mono_quant.formats import packed_linear

# (out channels per group, in channels, taps, groups): short panels (< 16, 17, 33 channels), K not
# a multiple of 4 (in channels 3, 5: the code-at-a-time path), 1x1 / 3x3 / 5x5 / 7x7 and 1xN taps
# (more than the 16 taps converted side by side: 25, 49; more than a tile row holds: 81), several
# groups, K a multiple of 512 (built in the stack tile: 1024, 128 x 4, 512 x 9) and not (1000: K-groups
# past whole 16-code steps), 13 channels (both halves of a panel, the second short), 6 taps (a block
# of 4 and two single taps)
SHAPES = [(1, 1, 1, 1), (5, 7, 1, 1), (16, 4, 1, 1), (17, 4099, 1, 1), (33, 12, 9, 1), (16, 8, 9, 2),
          (3, 3, 9, 1), (20, 5, 4, 3), (7, 16, 25, 1), (18, 8, 49, 2), (32, 256, 9, 1), (9, 4, 3, 4),
          (17, 1024, 1, 1), (20, 128, 4, 1), (16, 512, 9, 1), (5, 1000, 1, 1), (3, 8, 81, 1), (13, 36, 1, 1),
          (6, 8, 6, 1)]


def _packed(out_g, cin, taps, groups, seed=0, extremes=False):
    g = torch.Generator().manual_seed(seed)
    n, k = out_g * groups, cin * taps
    q = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=g)
    if extremes:
        q[::2] = 127
        q[1::3] = -128
        q[-1] = 0  # an all-zero row
    packed = torch.cat([reference.pack_int8(q[i * out_g:(i + 1) * out_g])[0] for i in range(groups)])
    return q, packed


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("per_row", [True, False], ids=["per_row", "per_tensor"])
def test_matches_the_twin_and_the_weights_in_torch_order(shape, per_row, isa):
    out_g, cin, taps, groups = shape
    q, packed = _packed(*shape, extremes=per_row)
    n, k = q.shape
    g = torch.Generator().manual_seed(1)
    scale = torch.rand(n if per_row else 1, generator=g) + 0.01
    zp = torch.randint(-5, 6, (n if per_row else 1,), dtype=torch.int32, generator=g)
    got = kernels.dequantize_packed_int8(packed, groups, out_g, k, taps, scale, zp)
    twin = reference.dequantize_packed_int8(packed, groups, out_g, k, taps, scale, zp)
    torch_order = q.reshape(n, taps, cin).transpose(1, 2).reshape(n, k)  # packed (tap, channel) -> (channel, tap)
    assert torch.equal(got, twin)
    assert torch.equal(got, reference.dequantize_rows(torch_order, scale, zp))


def test_out_threads_and_inputs_untouched():
    q, packed = _packed(40, 64, 9, 1)
    n, k = q.shape
    scale, zp = torch.rand(n) + 0.1, torch.zeros(n, dtype=torch.int32)
    before = packed.clone()
    one = _C.packed_dequantize(packed.numpy(), 1, n, k, 9, scale.numpy(), zp.numpy(), nthreads=1)
    out = np.full((n, k), np.nan, np.float32)
    two = _C.packed_dequantize(packed.numpy(), 1, n, k, 9, scale.numpy(), zp.numpy(), nthreads=2, out=out)
    assert two is out and np.array_equal(one, two) and torch.equal(packed, before)
    strided = torch.stack([packed, packed], 1)[:, 0]  # (a non-contiguous packed buffer: read through a copy)
    assert np.array_equal(_C.packed_dequantize(strided.numpy(), 1, n, k, 9, scale.numpy(), zp.numpy()), one)


def _bad(**change):
    q, packed = _packed(16, 8, 9, 1)
    args = dict(packed=packed.numpy(), groups=1, out_g=16, k=72, taps=9, scale=np.ones(16, np.float32),
                zero_point=np.zeros(16, np.int32))
    args.update(change)
    return args


@pytest.mark.parametrize("change,exc,match", [
    (dict(taps=5), ValueError, "taps"), (dict(taps=0), ValueError, "taps"), (dict(groups=0), ValueError, "groups"),
    (dict(k=76, taps=4), ValueError, "bytes"), (dict(out_g=17), ValueError, "bytes"),
    (dict(groups=2, out_g=8), ValueError, "bytes"), (dict(k=1 << 40, taps=1), ValueError, "k"),
    (dict(scale=np.ones(3, np.float32)), ValueError, "scale"), (dict(packed=np.zeros(1152, np.uint8)), TypeError, "int8"),
    (dict(out=np.zeros((16, 71), np.float32)), ValueError, "out"), (dict(out=[0.0]), ValueError, "out"),
])
def test_bad_arguments_raise(change, exc, match):
    with pytest.raises(exc, match=match):
        _C.packed_dequantize(**_bad(**change))


def test_out_overlapping_the_codes_is_refused():
    args = _bad()
    out = np.zeros((16, 72), np.float32)
    args["packed"] = out.view(np.int8).reshape(-1)[:args["packed"].size]
    with pytest.raises(ValueError, match="overlaps"):
        _C.packed_dequantize(**args, out=out)


@pytest.mark.parametrize("kind", ["conv", "grouped_conv", "linear"])
def test_a_layers_weight_in_torch_order(kind):
    torch.manual_seed(0)
    layer = {"conv": nn.Conv2d(24, 20, 3), "grouped_conv": nn.Conv2d(12, 18, (1, 3), groups=3),
             "linear": nn.Linear(37, 19)}[kind]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = mq.quantize(nn.Sequential(layer), activations=None).model[0]
    info = q.format.kernel_args(q)[0]
    w = packed_linear.dequantized_packed(q, info, None if kind == "linear" else q.kernel_size2d)
    assert torch.equal(w, q.dequantized_weight(torch.float32).reshape(w.shape))
