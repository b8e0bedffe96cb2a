"""The dynamic direct conv's split kernel (csrc/conv_split.c, x86/avx2/dconv_split.c): AVX2
without VNNI, the weight as vpmaddubsw's unsigned side (w + 128) against the image's int8 codes,
a pair of channels of one sign past 128 cut down in the image and its cut added to the outputs
its taps reach, -128 times each output pixel's field of codes.  The same bits as the sign trick
and the im2col route at every level, through padding, strides, dilation, image corners and both
work-item modes; the rules keep the sign trick on uniform noise."""
import pytest
import torch
from torch import nn

import mono_quant as mq
from mono_quant import _C, reference
from mono_quant.kernels import dynamic_conv
from mono_quant.modules.linear import kernel_args
from conftest import KERNELS, at_isa

CASES = [  # in, out, kernel, stride, padding, dilation
    (8, 16, 3, 1, 1, 1),
    (8, 20, 3, 2, 1, 1),       # stride 2: cuts on pixels some taps skip
    (12, 18, 3, 1, 2, 2),      # dilation 2
    (16, 24, 1, 1, 0, 1),      # 1x1
    (4, 33, (3, 1), (1, 2), (0, 1), 1),  # rectangular, uneven strides, a panel's tail
    (32, 5, 5, 1, 2, 1),       # fewer outputs than a panel
]
IDS = [str(c) for c in CASES]


@pytest.fixture(autouse=True)
def split_mode():
    previous = _C.set_split_rows(1)
    yield
    _C.set_split_rows(previous)


def _quantized(case, seed):
    cin, cout, k, s, p, d = case
    torch.manual_seed(seed)
    conv = nn.Conv2d(cin, cout, k, stride=s, padding=p, dilation=d).eval()
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape))
    return conv, mq.quantize(conv).model


def _breaking(cin, batch, size=(9, 11), seed=0):
    """Post-ReLU images whose largest values sit in pairs of channels (0-1, 2-3) of one sign:
    at the corners (every tap's padding), inside, on a pixel a stride skips, a negative pair,
    -127 beside -127 and 127 beside 127 (cuts of -126 and 126), sums of exactly 128 (kept), both
    pairs of a K-group on one pixel."""
    torch.manual_seed(seed)
    x = torch.relu(torch.randn(batch, cin, *size))
    h, w = size
    for b in range(batch):
        x[b, 0:2, 0, 0] = 6.0          # codes 127, 127
        x[b, 0:2, h - 1, w - 1] = 5.0
        x[b, 2:4, 3, 5] = -6.0         # -127, -127
        x[b, 0:2, 1, 1] = torch.tensor([3.0, 3.1])
        x[b, 2:4, 4, 4] = torch.tensor([3.0, 3.047])  # about 64 + 64: at the edge of 128
        x[b, 0:4, 2, 7] = torch.tensor([6.0, 5.0, -6.0, -5.5])  # both pairs of a K-group: one spread
        if cin > 4:
            x[b, 4:6, h // 2, w // 2] = torch.tensor([5.5, 2.0])
    return x


def _run(qconv, x, threads, mode, direct=True, counter="split_conv_images"):
    """The layer's C conv on x at `threads`, set_split_rows(mode): (y, images counted by `counter`)."""
    previous = (torch.get_num_threads(), dynamic_conv.set_direct(direct), _C.set_split_rows(mode))
    torch.set_num_threads(threads)
    try:
        before = _C.linear_kernels()[counter]
        with torch.no_grad():
            y = qconv._packed_conv(x, *kernel_args(qconv))
        return y, _C.linear_kernels()[counter] - before
    finally:
        torch.set_num_threads(previous[0])
        dynamic_conv.set_direct(previous[1])
        _C.set_split_rows(previous[2])


def _bits(t):
    return t.contiguous().view(torch.int32)


def _has_split(isa):
    with at_isa(isa):
        return _C.linear_kernels()["dynamic_conv_split"] != "none"


def _runs_against_the_references(conv, qconv, x, isa, counter="split_conv_images"):
    """At level isa: the sign trick (mode 0), the im2col route and the reference agree; returns the
    sign trick's output and (y, images counted) for modes 1 and 2 at 1 and 2 threads."""
    with at_isa(isa):
        sign, none = _run(qconv, x, 1, 0, counter=counter)
        im2col, _ = _run(qconv, x, 1, 0, direct=False, counter=counter)
        runs = [_run(qconv, x, threads, mode, counter=counter) for mode in (1, 2) for threads in (1, 2)]
    ref = reference.conv2d_int8(x, qconv.quantized_weight().qdata, qconv.weight_scale, qconv.weight_zero_point,
                                qconv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    assert torch.equal(im2col, ref) and torch.equal(_bits(sign), _bits(im2col)) and none == 0
    return sign, runs


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("isa", KERNELS)
def test_split_conv_gives_the_sign_tricks_bits(case, isa):
    conv, qconv = _quantized(case, 1)
    for batch in (1, 3):
        x = _breaking(case[0], batch, seed=batch)
        sign, runs = _runs_against_the_references(conv, qconv, x, isa)
        for y, split in runs:
            assert torch.equal(_bits(y), _bits(sign))
        if _has_split(isa):  # always (mode 2) splits every image: the kernel really ran
            assert [split for _, split in runs][2:] == [batch, batch]


@pytest.mark.parametrize("isa", KERNELS)
def test_split_conv_rules(isa):
    """By its rules, post-ReLU images with a negative value (codes of both signs: not the unsigned
    kernel's) take the split, uniform noise (a quarter of the pairs breaking) keeps the sign trick,
    and so does a layer of fewer outputs than a panel."""
    if not _has_split(isa):
        pytest.skip("no split kernel at this level")
    conv, qconv = _quantized((64, 32, 3, 1, 1, 1), 2)
    # 64 x 32 x 32 post-ReLU images break 0.1-0.3% of their pairs (at most 88 over 40 seeds,
    # against the rule's 256 = pixels * channels / 256); noise a quarter
    relu = torch.relu(torch.randn(2, 64, 32, 32))
    relu[:, 5, 7, 9] = -0.5
    noise = torch.rand(2, 64, 32, 32) - 0.5
    with at_isa(isa):
        (y_relu, split_relu), (y_noise, split_noise) = _run(qconv, relu, 1, 1), _run(qconv, noise, 1, 1)
        assert split_relu == 2 and split_noise == 0
        assert torch.equal(_bits(y_relu), _bits(_run(qconv, relu, 1, 0)[0]))
        assert torch.equal(_bits(y_noise), _bits(_run(qconv, noise, 1, 2)[0]))
        _, narrow = _quantized((64, 8, 3, 1, 1, 1), 3)
        assert _run(narrow, relu, 1, 1)[1] == 0 and _run(narrow, relu, 1, 2)[1] == 2


@pytest.mark.parametrize("isa", KERNELS)
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("kernel", ["split", "unsigned"])
def test_conv_two_threads_row_blocks(isa, batch, kernel):
    """A call large enough for two threads: row blocks after every image is quantized (and split),
    batch 1, or whole images per thread, batch 3; the one-thread and sign-trick bits.  The split
    kernel on images of both signs (mode 2), the unsigned one on post-ReLU images (mode 1)."""
    conv, qconv = _quantized((64, 64, 3, 1, 1, 1), 4)
    x = _breaking(64, batch, (31, 33), seed=batch)
    x, mode = (x, 2) if kernel == "split" else (torch.relu(x), 1)
    if batch > 1:
        x[1, 3, 4, 5] = float("nan")  # its own image's outputs NaN, on neither kernel
    counter = f"{kernel}_conv_images"
    with at_isa(isa):
        one, _ = _run(qconv, x, 1, mode, counter=counter)
        two, count = _run(qconv, x, 2, mode, counter=counter)
        sign, _ = _run(qconv, x, 2, 0)
        has = _C.linear_kernels()[f"dynamic_conv_{kernel}"] != "none"
    assert torch.equal(_bits(one), _bits(two)) and torch.equal(_bits(one), _bits(sign))
    # (mode 2 splits the NaN image's zero codes too; the unsigned kernel never takes it)
    assert count == ((batch - (batch > 1 and kernel == "unsigned")) if has else 0)
    assert torch.isnan(one[1]).all() if batch > 1 else not torch.isnan(one).any()


@pytest.mark.parametrize("isa", KERNELS)
@pytest.mark.parametrize("taps,panels,stride", [(1, 1, 64), (9, 3, 128), (2, 7, 192), (32, 2, 64)])
def test_split_spread_twin(isa, taps, panels, stride):
    """The correction step's SIMD twin against the formula: extreme weights and cuts (-128, 126),
    a panel's line among others (stride), several taps at once, each pair's cut on either byte."""
    gen = torch.Generator().manual_seed(panels)
    lines = torch.randint(-128, 128, (taps, panels, stride), dtype=torch.int8, generator=gen)
    lines[0, 0, :4] = torch.tensor([-128, 127, -128, 127], dtype=torch.int8)
    lines[-1, -1, :64] = -128
    w = lines[:, :, :64].reshape(taps, panels, 16, 4).to(torch.int64) + 128
    for cuts in ([126, 0, 0, -128], [0, -128, 1, 0], [-1, 0, 0, 0], [0, 0, 0, 0], [0, 127, -128, 0]):
        c = torch.tensor(cuts, dtype=torch.int8)
        with at_isa(isa):
            got = torch.from_numpy(_C.dconv_split_spread(lines.numpy(), c.numpy()))
        assert torch.equal(got.to(torch.int64), (w * c.to(torch.int64)).sum(-1).reshape(taps, -1))
    for bad in (torch.tensor([1, 1, 0, 0], dtype=torch.int8), torch.zeros(3, dtype=torch.int8)):
        with pytest.raises(ValueError, match="one nonzero per pair"):
            _C.dconv_split_spread(lines.numpy(), bad.numpy())
    cuts = torch.zeros(4, dtype=torch.int8).numpy()
    for bad_lines in (lines[:, :, :63], torch.zeros(33, 1, 64, dtype=torch.int8), torch.zeros(0, 1, 64, dtype=torch.int8)):
        with pytest.raises(ValueError, match="a multiple of 64"):
            _C.dconv_split_spread(bad_lines.numpy(), cuts)
    for bad_args in ((lines.float().numpy(), cuts), (lines[0].numpy(), cuts), (lines.numpy(), cuts.astype("int32")),
                     (lines.numpy(),), ([1, 2], cuts)):
        with pytest.raises((TypeError, ValueError)):
            _C.dconv_split_spread(*bad_args)
    assert _C.dconv_split_spread(torch.zeros(1, 0, 64, dtype=torch.int8).numpy(), cuts).shape == (1, 0)


def test_split_conv_not_for_reduce_range_or_odd_channels():
    conv, qconv = _quantized((8, 16, 3, 1, 1, 1), 5)
    x = _breaking(8, 2)
    qconv.set_reduce_range(True)
    assert _run(qconv, x, 1, 2)[1] == 0  # 7-bit codes: the u7 kernels
    _, odd = _quantized((6, 16, 3, 1, 1, 1), 6)
    assert _run(odd, torch.relu(torch.randn(2, 6, 9, 9)), 1, 2)[1] == 0  # im2col blocks inside the route
