"""The parameter-free float modules a static program keeps (pools, activations, ...) are saved
with every constructor argument that changes what they compute, checked at load, and rebuilt
from them: the loaded model gives the same bits.  (AvgPool2d's divisor_override and MaxPool2d's
return_indices were dropped: the loaded pool divided by its window, or returned a bare tensor
that the next op sliced.)"""
import inspect
import warnings

import pytest
import torch
from torch import nn
import torch.nn.functional as F

import mono_quant as mq
from mono_quant.io.errors import CheckpointError
from mono_quant.static.persist_float import FLOAT_MODULES
from static_file_edits import StaticFileEdits

KEY = "mono_quant.static"
X = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
X2 = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))


class Sandwich(nn.Module):
    """conv -> ``mid`` (a float module the program keeps) -> conv -> mean; ``pick``: ``mid``
    returns a tuple whose first item goes on (MaxPool2d(return_indices=True))."""

    def __init__(self, mid: nn.Module, pick: bool = False):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.mid = mid
        self.c2 = nn.Conv2d(8, 4, 3, padding=1)
        self.pick = pick

    def forward(self, x):
        y = self.mid(self.c1(x))
        if self.pick:
            y = y[0]
        return self.c2(y).mean((2, 3))


def _quantized(model: nn.Module):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mq.quantize(model.eval(), "int8", activations="static",
                           calibration=torch.randn(32, 3, 8, 8, generator=torch.Generator().manual_seed(2))).model


# each with arguments other than the defaults, so that a dropped one changes the numbers
POOLS = {
    "avg-divisor-override": lambda: Sandwich(nn.AvgPool2d(2, divisor_override=1)),
    "avg-divisor-override-3": lambda: Sandwich(nn.AvgPool2d(3, stride=1, padding=1, divisor_override=3)),
    "avg-count-include-pad": lambda: Sandwich(nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False)),
    "max-return-indices": lambda: Sandwich(nn.MaxPool2d(2, return_indices=True), pick=True),
    "max-dilated": lambda: Sandwich(nn.MaxPool2d((3, 2), stride=1, padding=1, dilation=(1, 2), ceil_mode=True)),
    "adaptive-avg": lambda: Sandwich(nn.AdaptiveAvgPool2d((3, None))),
}


def _assert_round_trip(model: nn.Module, tmp_path) -> None:
    q = _quantized(model)
    loaded = mq.load(mq.save(q, tmp_path / "m.safetensors"))
    with torch.no_grad():
        for x in (X, X2):
            assert torch.equal(loaded(x), q(x))
    mid = dict(loaded.named_modules()).get("layers.mid")
    assert type(mid) is type(model.mid)
    for arg in FLOAT_MODULES[type(mid)]:
        assert getattr(mid, arg) == getattr(model.mid, arg), arg


@pytest.mark.parametrize("make", POOLS.values(), ids=POOLS.keys())
def test_pools_load_with_every_argument(make, tmp_path):
    _assert_round_trip(make(), tmp_path)


# torch's deprecated spellings of arguments that are saved (Hardtanh(min_value=) sets min_val)
_ALIASES = {nn.Hardtanh: {"min_value", "max_value"}}


@pytest.mark.parametrize("cls", list(FLOAT_MODULES), ids=lambda c: c.__name__)
def test_every_constructor_argument_is_saved(cls):
    """Against torch's own signature: all but ``inplace`` (the program replays float modules out
    of place: the same values) and deprecated aliases."""
    params = {n for n, p in inspect.signature(cls.__init__).parameters.items()
              if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    assert params - {"inplace"} - _ALIASES.get(cls, set()) == set(FLOAT_MODULES[cls])


@pytest.fixture(scope="module")
def pool_file(tmp_path_factory):
    q = _quantized(Sandwich(nn.AvgPool2d(3, stride=1, padding=1, divisor_override=2)))
    return mq.save(q, tmp_path_factory.mktemp("static") / "pool.safetensors")


BAD_POOL_ARGS = {
    "divisor-zero": ("divisor_override", 0, "divisor_override"),
    "divisor-float": ("divisor_override", 1.5, "divisor_override"),
    "divisor-bool": ("divisor_override", True, "divisor_override"),
    "kernel-zero": ("kernel_size", 0, "kernel_size"),
    "kernel-triple": ("kernel_size", {"$tuple": [2, 2, 2]}, "kernel_size"),
    "kernel-text": ("kernel_size", "3", "kernel_size"),
    "padding-over-half": ("padding", 2, "padding"),
    "stride-negative": ("stride", -1, "stride"),
    "ceil-mode-text": ("ceil_mode", "false", "ceil_mode"),
    "count-include-pad-int": ("count_include_pad", 1, "count_include_pad"),
    "unknown": ("return_indices", True, r"arguments \['return_indices'\] are not among"),
}


@pytest.mark.parametrize("arg,value,message", BAD_POOL_ARGS.values(), ids=BAD_POOL_ARGS.keys())
def test_a_bad_pool_argument_is_refused_at_load(pool_file, tmp_path, arg, value, message):
    edits = StaticFileEdits(pool_file, KEY, tmp_path)
    manifest = edits.manifest_copy()
    entry = manifest["layers"]["mid"]
    assert entry["class"] == "AvgPool2d"
    entry["init_kwargs"]["$dict"][arg] = value
    with pytest.raises(CheckpointError, match=rf"layer 'mid' \(AvgPool2d\).*{message}"):
        mq.load(edits.write("edited.safetensors", manifest))


def test_a_file_without_the_newer_arguments_loads_with_their_defaults(pool_file, tmp_path):
    """A file written before divisor_override / return_indices were saved: torch's defaults."""
    edits = StaticFileEdits(pool_file, KEY, tmp_path)
    manifest = edits.manifest_copy()
    del manifest["layers"]["mid"]["init_kwargs"]["$dict"]["divisor_override"]
    pool = dict(mq.load(edits.write("old.safetensors", manifest)).named_modules())["layers.mid"]
    assert pool.divisor_override is None and pool.kernel_size == 3


def test_an_argument_the_format_cannot_hold_is_refused_at_save(tmp_path):
    q = _quantized(Sandwich(nn.AvgPool2d(2)))
    q.layers["mid"].padding = torch.tensor(0)  # (torch takes it; a file holds JSON numbers)
    with pytest.raises(ValueError, match=r"layer 'mid' \(AvgPool2d\): padding"):
        mq.save(q, tmp_path / "m.safetensors")
    assert not (tmp_path / "m.safetensors").exists()


# parameter-free activations (mq.save refused ELU / Softplus as "a float module with weights, or a
# custom module"), with arguments other than the defaults
ACTIVATIONS = {
    "elu": lambda: nn.ELU(alpha=0.5), "celu": lambda: nn.CELU(alpha=0.7), "selu": nn.SELU,
    "softplus": lambda: nn.Softplus(beta=2.0, threshold=0.5), "leaky-relu": lambda: nn.LeakyReLU(0.2),
    "hardswish": nn.Hardswish, "hardsigmoid": nn.Hardsigmoid, "mish": nn.Mish, "silu": nn.SiLU,
    "gelu-tanh": lambda: nn.GELU("tanh"), "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "logsigmoid": nn.LogSigmoid,
    "softsign": nn.Softsign, "tanhshrink": nn.Tanhshrink, "hardshrink": lambda: nn.Hardshrink(0.3),
    "softshrink": lambda: nn.Softshrink(0.3), "threshold": lambda: nn.Threshold(0.1, -1.0),
    "hardtanh": lambda: nn.Hardtanh(-2.0, 2.0), "softmax": lambda: nn.Softmax(1),
    "log-softmax": lambda: nn.LogSoftmax(1), "softmin": lambda: nn.Softmin(1),
}


@pytest.mark.parametrize("make", ACTIVATIONS.values(), ids=ACTIVATIONS.keys())
def test_activations_load_with_every_argument(make, tmp_path):
    _assert_round_trip(Sandwich(make()), tmp_path)


@pytest.mark.parametrize("mid,message", [
    (nn.InstanceNorm2d(8, affine=True), r"layer 'mid' is a InstanceNorm2d, a float module with parameters or "
                                        r"buffers, which a static file holds for a fixed table of classes only"),
    (nn.LocalResponseNorm(2), r"layer 'mid' is a LocalResponseNorm, not among the float modules a static file "
                              r"rebuilds"),
])
def test_a_module_a_static_file_cannot_hold_is_named_with_why(mid, message, tmp_path):
    q = _quantized(Sandwich(mid))
    assert type(q.layers["mid"]) is type(mid)  # (kept as a float layer of the program)
    with pytest.raises(TypeError, match=message):
        mq.save(q, tmp_path / "m.safetensors")


@pytest.mark.parametrize("cls,arg,value", [
    ("ELU", "alpha", "1"), ("Softplus", "beta", {"$float": "inf"}), ("Threshold", "value", None),
    ("Hardshrink", "lambd", True), ("LogSoftmax", "dim", 1.0), ("CELU", "inplace", True),
    ("ELU", "alpha", 10 ** 400), ("Hardtanh", "min_val", -10 ** 400),  # (math raised OverflowError on these)
])
def test_a_bad_activation_argument_is_refused_at_load(pool_file, tmp_path, cls, arg, value):
    edits = StaticFileEdits(pool_file, KEY, tmp_path)
    manifest = edits.manifest_copy()
    manifest["layers"]["mid"] = {"class": cls, "init_kwargs": {"$dict": {arg: value}}}
    # (an int too large for a float has 309 digits and more: refused as JSON, over 40 digits)
    message = "an integer of 401 digits" if isinstance(value, int) and abs(value) > 10 ** 300 else \
        rf"layer 'mid' \({cls}\).*{arg}"
    with pytest.raises(CheckpointError, match=message):
        mq.load(edits.write("edited.safetensors", manifest))


# resampling and padding (mq.save refused them: "not among the float modules a static file rebuilds"),
# with arguments other than the defaults
RESAMPLING = {
    "upsample-nearest": lambda: nn.Upsample(scale_factor=2), "upsample-size": lambda: nn.Upsample(size=(12, 10)),
    "upsample-bilinear": lambda: nn.Upsample(scale_factor=1.5, mode="bilinear", align_corners=True),
    "upsample-bicubic": lambda: nn.Upsample(scale_factor=2, mode="bicubic", recompute_scale_factor=True),
    "upsampling-nearest2d": lambda: nn.UpsamplingNearest2d(scale_factor=2),
    "upsampling-bilinear2d": lambda: nn.UpsamplingBilinear2d(size=9),
    "zero-pad": lambda: nn.ZeroPad2d((1, 0, 2, 1)), "constant-pad": lambda: nn.ConstantPad2d(1, -0.5),
    "reflection-pad": lambda: nn.ReflectionPad2d((2, 1, 0, 1)), "replication-pad": lambda: nn.ReplicationPad2d(1),
}


@pytest.mark.parametrize("make", RESAMPLING.values(), ids=RESAMPLING.keys())
def test_resampling_and_padding_load_with_every_argument(make, tmp_path):
    _assert_round_trip(Sandwich(make()), tmp_path)


class Shuffles(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.down = nn.PixelUnshuffle(2)
        self.c2 = nn.Conv2d(32, 32, 1)
        self.up = nn.PixelShuffle(2)

    def forward(self, x):
        return self.up(self.c2(self.down(self.c1(x)))).mean((2, 3))


def test_pixel_shuffles_load(tmp_path):
    q = _quantized(Shuffles())
    loaded = mq.load(mq.save(q, tmp_path / "m.safetensors"))
    with torch.no_grad():
        assert torch.equal(loaded(X), q(X))
    assert loaded.layers["up"].upscale_factor == 2 and loaded.layers["down"].downscale_factor == 2


@pytest.mark.parametrize("cls,kwargs,message", [
    ("Upsample", {"size": None, "scale_factor": None, "mode": "nearest"}, "give one of size and scale_factor"),
    ("Upsample", {"size": 4, "scale_factor": 2.0, "mode": "nearest"}, "give one of size and scale_factor"),
    ("Upsample", {"scale_factor": 1e6, "mode": "nearest"}, "scale_factor must be"),
    ("Upsample", {"scale_factor": 2000.0, "mode": "nearest"}, "scale_factor must be"),  # (every call allocates it)
    ("Upsample", {"size": {"$tuple": [100000, 100000]}, "mode": "nearest"}, "size must be"),
    ("ZeroPad2d", {"padding": 5000}, "padding must be"),
    ("Upsample", {"scale_factor": 2.0, "mode": "nearest", "align_corners": True}, "align_corners is for"),
    ("Upsample", {"scale_factor": 2.0, "mode": "zoom"}, "mode must be"),
    ("PixelShuffle", {"upscale_factor": 0}, "upscale_factor must be"),
    ("ZeroPad2d", {"padding": {"$tuple": [1, 2, 3]}}, "padding must be"),
    ("ConstantPad2d", {"padding": 1, "value": "0"}, "value must be"),
])
def test_a_bad_resampling_argument_is_refused_at_load(pool_file, tmp_path, cls, kwargs, message):
    edits = StaticFileEdits(pool_file, KEY, tmp_path)
    manifest = edits.manifest_copy()
    manifest["layers"]["mid"] = {"class": cls, "init_kwargs": {"$dict": kwargs}}
    with pytest.raises(CheckpointError, match=rf"layer 'mid' \({cls}\).*{message}"):
        mq.load(edits.write("edited.safetensors", manifest))


class Interpolating(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.c2(F.interpolate(self.c1(x), scale_factor=2.0)).mean((2, 3))


def test_an_interpolate_call_asking_for_a_huge_output_is_refused_at_load(tmp_path):
    """A replayed F.interpolate's constant scale_factor / size had no bound: a 6 KB file made every
    forward allocate any amount (Upsample's bounds now: 1024 per dimension, 2^30 elements for a size)."""
    q = _quantized(Interpolating())
    path = mq.save(q, tmp_path / "m.safetensors")
    with torch.no_grad():
        assert torch.equal(mq.load(path)(X), q(X))
    edits = StaticFileEdits(path, KEY, tmp_path)
    for value, message in ((3000.0, "scale_factor 3000.0"), (None, "size")):
        manifest = edits.manifest_copy()
        (op,) = [e for e in manifest["program"] if e.get("call", {}).get("target") == "torch.nn.functional.interpolate"]
        kwargs = op["call"]["kwargs"]["$dict"]
        if value is None:
            kwargs["scale_factor"], kwargs["size"] = None, {"$tuple": [50000, 50000]}
        else:
            kwargs["scale_factor"] = value
        with pytest.raises(CheckpointError, match=rf"interpolate {message}"):
            mq.load(edits.write("edited.safetensors", manifest))


def test_one_dimensional_resampling_of_audio_sizes_loads(tmp_path):
    """A 1-D size of 16000 samples, or frames to samples by 160: within the bounds (a review found the
    first bounds refused them)."""
    class Frames(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.up, self.up2 = nn.Conv1d(3, 8, 3, padding=1), nn.Upsample(scale_factor=160), \
                nn.Upsample(size=16000)
            self.c2 = nn.Conv1d(8, 4, 1)

        def forward(self, x):
            return self.c2(self.up2(self.up(self.c1(x))))

    torch.manual_seed(0)
    model = Frames().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = mq.quantize(model, "int8", activations="static", calibration=[torch.randn(2, 3, 50)]).model
    x = torch.randn(1, 3, 50)
    with torch.no_grad():
        assert torch.equal(mq.load(mq.save(q, tmp_path / "m.safetensors"))(x), q(x))
