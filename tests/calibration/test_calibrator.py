"""Calibrator: feeding forms, limits, warnings, persistence, memory, and the model left untouched."""
import copy
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from mono_quant.calibration import OBSERVERS, CalibrationWarning, Calibrator

BINS = 512  # small histograms keep the tests fast; the rule is the same at any size


# tiny models: one thread avoids OpenMP start-up and spinning on a busy host
pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Block(nn.Module):
    """Conv-BN-ReLU with a functional residual add (not a module: not capturable by hooks)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.bn(self.conv(x))) + x


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = Block()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(3, 4)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.block(x)), 1))


class KwNet(Net):
    def forward(self, pixel_values, scale=1.0):  # noqa: D401 - dict batches call model(**batch)
        return super().forward(pixel_values * scale)


@pytest.fixture
def net():
    torch.manual_seed(0)
    m = Net()
    m.train()  # a training-mode model: feed() must restore that
    with torch.no_grad():
        m.block.bn.running_mean.uniform_(-0.5, 0.5)
        m.block.bn.running_var.uniform_(0.5, 2.0)
    return m


def data(n=120, seed=0):
    return torch.randn(n, 3, 6, 6, generator=torch.Generator().manual_seed(seed))


def quiet_feed(cal, *args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        return cal.feed(*args, **kw)


def test_model_is_not_modified(net):
    before = copy.deepcopy(net.state_dict())
    flags = [m.training for m in net.modules()]
    cal = Calibrator(net, bins=BINS)
    cal.feed(data())
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k  # BN running stats untouched (ran in eval mode)
    assert [m.training for m in net.modules()] == flags
    for m in net.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks


def test_hooks_removed_when_the_model_raises(net):
    cal = Calibrator(net, bins=BINS)
    with pytest.raises(RuntimeError):
        cal.feed([torch.randn(2, 5, 6, 6)])  # wrong channel count
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())
    assert net.training


def test_points_aliases_and_uncaptured_ops(net):
    cal = Calibrator(net, bins=BINS)
    cal.feed(data())
    assert set(cal.stats) == {"block.conv.input", "block.conv.output", "block.bn.output", "block.relu.output",
                              "pool.input", "pool.output", "fc.input", "fc.output"}
    assert cal.aliases == {"block.bn.input": "block.conv.output", "block.relu.input": "block.bn.output"}
    # pool's input is the residual sum (not produced by a module) and fc's the flatten: observed
    ops = [op for _, op in cal.uncaptured_ops()]
    assert "add" in ops and "flatten" not in ops


def test_statistics_are_exact(net):
    x = data()
    cal = Calibrator(net, bins=BINS)
    cal.feed(x)
    s = cal.stats["block.conv.output"]
    with torch.no_grad():
        y = net.block.conv(x)
    assert s.min[0] == y.min() and s.max[0] == y.max()
    np.testing.assert_array_equal(s.channel_min, y.amin(dim=(0, 2, 3)).numpy())
    np.testing.assert_array_equal(s.channel_max, y.amax(dim=(0, 2, 3)).numpy())
    assert s.samples == 120 and s.numel == y.numel() and s.histogram.total == y.numel()


@pytest.mark.parametrize("form", ["tensor", "list", "loader", "xy_tuples", "dicts", "callable", "generator"])
def test_feeding_forms_give_the_same_statistics(form):
    torch.manual_seed(0)
    model = KwNet() if form == "dicts" else Net()
    x = data(128)
    batches = list(x.split(32))
    feeds = {
        "tensor": lambda: x,
        "list": lambda: batches,
        "loader": lambda: torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=32),
        "xy_tuples": lambda: [(b, torch.zeros(len(b))) for b in batches],
        "dicts": lambda: [{"pixel_values": b} for b in batches],
        "callable": lambda: (lambda m: [m(b) for b in batches]),
        "generator": lambda: (b for b in batches),
    }
    cal = Calibrator(model, bins=BINS, batch_size=32)
    used = quiet_feed(cal, feeds[form]())
    ref = Calibrator(model, bins=BINS, batch_size=32)
    quiet_feed(ref, x)
    assert used == 128
    for point, s in ref.stats.items():
        got = cal.stats[point]
        assert (got.min[0], got.max[0]) == (s.min[0], s.max[0]), point
        np.testing.assert_array_equal(got.histogram.counts, s.histogram.counts)


def test_calibration_samples_limit_cuts_the_last_batch(net):
    cal = Calibrator(net, bins=BINS)
    used = cal.feed([data(64, s) for s in range(4)], calibration_samples=150)
    assert used == 150 and cal.samples == 150
    assert cal.stats["fc.output"].samples == 150
    with pytest.raises(ValueError, match="calibration_samples"):
        cal.feed(data(), calibration_samples=0)


def test_warnings_few_samples_and_nonfinite(net):
    cal = Calibrator(net, bins=BINS)
    cal.feed(data(10))
    with pytest.warns(CalibrationWarning, match="10 samples"):
        cal.ranges()
    bad = data(100)
    bad[3, 0, 2, 2] = float("nan")
    with pytest.warns(CalibrationWarning, match="NaN/Inf"):
        cal.feed(bad)
    assert cal.stats["block.conv.input"].nonfinite == 1


def test_bad_data_is_a_clear_error(net):
    cal = Calibrator(net, bins=BINS)
    with pytest.raises(TypeError, match="not a tensor"):
        cal.feed(3)
    with pytest.raises(TypeError, match="string"):
        cal.feed("images/")
    with pytest.raises(TypeError, match="Calibrator needs"):
        Calibrator({"weight": torch.zeros(1)})
    with pytest.raises(RuntimeError, match="feed"):
        Calibrator(net, bins=BINS).ranges()


@pytest.mark.parametrize("observer", OBSERVERS)
@pytest.mark.parametrize("encoding,symmetric", [("int8", True), ("int8", False), ("int7", True)])
def test_every_observer_gives_valid_ranges(net, observer, encoding, symmetric):
    cal = Calibrator(net, bins=BINS)
    cal.feed(data())
    for point, r in cal.ranges(observer, encoding=encoding, symmetric=symmetric).items():
        s = cal.stats[point]
        lo, hi = min(float(s.min[0]), 0.0), max(float(s.max[0]), 0.0)
        assert r.lo <= r.hi, point
        if symmetric:  # (-t, t) with t at most the largest magnitude
            assert r.lo == -r.hi and r.hi <= max(-lo, hi) * (1 + 1e-6), point
        else:
            assert lo - 1e-6 <= r.lo and r.hi <= hi + 1e-6, point
        assert r.scale > 0 and r.qmin <= r.zero_point <= r.qmax
        if symmetric:
            assert r.zero_point == 0 and (r.qmin, r.qmax) == ((-127, 127) if encoding == "int8" else (-63, 63))
    with pytest.raises(ValueError, match="observer must be"):
        cal.ranges("kmeans")


def test_minmax_only_calibrator_refuses_histogram_observers(net):
    cal = Calibrator(net, bins=None)
    cal.feed(data())
    assert cal.ranges("minmax")
    with pytest.raises(ValueError, match="needs histograms"):
        cal.ranges("entropy")


def test_tracked_state_does_not_grow_with_samples(net):
    small, large = Calibrator(net, bins=BINS), Calibrator(net, bins=BINS)
    small.feed(data(100))
    large.feed([data(100, s) for s in range(10)])
    assert large.samples == 10 * small.samples
    assert large.nbytes() == small.nbytes()


def test_save_load_round_trip_and_continue(net, tmp_path):
    cal = Calibrator(net, bins=BINS)
    cal.feed(data())
    path = tmp_path / "stats.safetensors"
    cal.save(path)
    loaded = Calibrator.load(path, net)
    for obs in OBSERVERS:
        assert loaded.ranges(obs) == cal.ranges(obs), obs
    assert loaded.aliases == cal.aliases and loaded.samples == cal.samples
    loaded.feed(data(50, 1))  # statistics keep streaming after a load
    cal.feed(data(50, 1))
    assert loaded.ranges("entropy") == cal.ranges("entropy")
    assert b"pickle" not in path.read_bytes()[:200]


def test_load_rejects_corrupt_files(net, tmp_path):
    from safetensors.numpy import load_file, save_file
    import json

    cal = Calibrator(net, bins=BINS)
    cal.feed(data())
    good = tmp_path / "good.safetensors"
    cal.save(good)
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        Calibrator.load(tmp_path / "junk.safetensors", net)
    arrays = load_file(str(good))
    from safetensors import safe_open
    with safe_open(str(good), framework="numpy") as f:
        header = json.loads(f.metadata()["mono_quant.calibration"])
    bad = copy.deepcopy(header)
    bad["points"]["fc.output"]["histogram"]["exp"] += 3  # would write outside the counts
    save_file(arrays, str(tmp_path / "bad.safetensors"), metadata={"mono_quant.calibration": json.dumps(bad)})
    with pytest.raises(ValueError, match="binning rule"):
        Calibrator.load(tmp_path / "bad.safetensors", net)
    missing = dict(arrays)
    del missing["fc.output/hist_counts"]
    save_file(missing, str(tmp_path / "missing.safetensors"), metadata={"mono_quant.calibration": json.dumps(header)})
    with pytest.raises(ValueError, match="histogram counts missing"):
        Calibrator.load(tmp_path / "missing.safetensors", net)
    save_file(arrays, str(tmp_path / "nometa.safetensors"))
    with pytest.raises(ValueError, match="invalid calibration statistics"):
        Calibrator.load(tmp_path / "nometa.safetensors", net)


def test_extra_types_capture_a_user_add_module():
    class Add(nn.Module):
        def forward(self, a, b):
            return a + b

    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.add = Add()

        def forward(self, x):
            return self.add(self.fc(x), x * 2)

    model = Residual()
    cal = Calibrator(model, bins=BINS, extra_types=(Add,))
    x = torch.randn(100, 4)
    cal.feed(x)
    assert cal.aliases["add.input"] == "fc.output"
    s = cal.stats["add.input1"]  # the second operand, not produced by a captured module
    assert s.min[0] == (x * 2).min() and s.max[0] == (x * 2).max()
    assert "add.output" in cal.stats


class _ChangedInPlace(nn.Module):
    """fc1's output changed in place by an op the calibrator doesn't hook, then fc2's input."""

    def __init__(self, op):
        super().__init__()
        self.fc1, self.fc2, self.op = nn.Linear(8, 8), nn.Linear(8, 4), op

    def forward(self, x):
        y = self.fc1(x)
        self.op(y)
        return self.fc2(y)


@pytest.mark.parametrize("op", [lambda y: y.mul_(4), lambda y: y.relu_(), nn.Hardswish(inplace=True)],
                         ids=["mul_", "relu_", "Hardswish(inplace=True)"])
def test_an_input_changed_in_place_is_observed_not_aliased(op):
    """The alias said fc2's input was fc1's output, whose range was taken before the in-place op:
    the static model quantized fc2's input on the wrong scale (4x off for mul_, 9.9 dB)."""
    torch.manual_seed(0)
    model, x = _ChangedInPlace(op), torch.randn(64, 8)
    cal = Calibrator(model, bins=BINS)
    cal.feed(x)
    point = cal.aliases.get("fc2.input", "fc2.input")  # a hooked in-place module: its own output, rightly
    assert point in ("fc2.input", "op.output")
    with torch.no_grad():
        y = model.fc1(x)
        op(y)
    assert cal.stats[point].min[0] == y.min() and cal.stats[point].max[0] == y.max()


class _SharedOnItsOwnOutput(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        return self.fc(self.fc(x))


def test_a_shared_layer_fed_its_own_output_keeps_both_inputs_ranges():
    """The second call aliased fc.input to fc.output and the first call's (wider) input range was lost."""
    torch.manual_seed(0)
    model, x = _SharedOnItsOwnOutput(), torch.randn(64, 8) * 10
    cal = Calibrator(model, bins=BINS)
    cal.feed(x)
    assert "fc.input" not in cal.aliases
    with torch.no_grad():
        both = torch.cat([x, model.fc(x)])
    assert cal.stats["fc.input"].min[0] == both.min() and cal.stats["fc.input"].max[0] == both.max()
    assert cal.stats["fc.input"].samples == 128


def test_an_alias_that_stops_holding_starts_from_what_it_aliased():
    """conv's output feeds the shared fc first (an alias), then fc takes another tensor: fc.input
    keeps the aliased batches' statistics and adds the rest."""
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.fc = nn.Linear(8, 8), nn.Linear(8, 8)

        def forward(self, x):
            return self.fc(self.a(x)) + self.fc(x * 3)
    torch.manual_seed(0)
    model, x = M(), torch.randn(32, 8)
    cal = Calibrator(model, bins=BINS)
    cal.feed(x, calibration_samples=32)
    with torch.no_grad():
        both = torch.cat([model.a(x), x * 3])
    assert "fc.input" not in cal.aliases
    assert cal.stats["fc.input"].min[0] == both.min() and cal.stats["fc.input"].max[0] == both.max()


def test_a_tuple_of_inputs_and_targets_is_refused(net):
    """(X, Y) given as the data was iterated: the targets ran through the model as inputs."""
    cal = Calibrator(net, bins=BINS)
    x = data()
    with pytest.raises(TypeError, match=r"is a tuple.*\[\(X, Y\)\]"):
        cal.feed((x, torch.zeros(x.shape[0], dtype=torch.long)))
    cal.feed([(x, torch.zeros(x.shape[0], dtype=torch.long))])  # a batch inside a list: x is used
    assert cal.samples == x.shape[0]


def test_calibration_samples_with_a_callable_is_refused(net):
    """A callable runs the model itself: the cap was ignored (every sample counted, no word said)."""
    x = data()
    with pytest.raises(ValueError, match="calibration_samples=10 caps.*callable"):
        Calibrator(net, bins=BINS).feed(lambda model: model(x), calibration_samples=10)
    cal = Calibrator(net, bins=BINS)
    cal.feed(lambda model: model(x))
    assert cal.samples == x.shape[0]


def _edit(header, how):
    edited = copy.deepcopy(header)
    how(edited)
    return edited


@pytest.mark.parametrize("how,match", [
    (lambda h: h.clear() or h.update({"x": 1}) or None, "format"),
    (lambda h: h.update(points=[]), "points must be a JSON object"),
    (lambda h: h.update(aliases=[1]), "aliases must be a JSON object"),
    (lambda h: h["points"].update({"fc.output": [1, 2]}), "point 'fc.output' must be a JSON object"),
    (lambda h: h.update(samples=1e400), "OverflowError"),
    (lambda h: h.update(samples=-1), "negative sample counts"),
    (lambda h: h.update(bins="x"), "bins 'x'"),
    (lambda h: h["points"]["fc.output"].update(min=5.0, max=-5.0), "min <= max"),
    (lambda h: h["points"]["fc.output"].update(min="nan"), "min <= max"),
])
def test_load_names_what_is_wrong_in_the_header(net, tmp_path, how, match):
    """JSON of the wrong shape raised AttributeError / OverflowError past load's ValueError, and a NaN
    or reversed range loaded as a scale-1 range around 0."""
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file
    import json

    cal = Calibrator(net, bins=BINS)
    cal.feed(data())
    cal.save(tmp_path / "good.safetensors")
    with safe_open(str(tmp_path / "good.safetensors"), framework="numpy") as f:
        header = json.loads(f.metadata()["mono_quant.calibration"])
    save_file(load_file(str(tmp_path / "good.safetensors")), str(tmp_path / "bad.safetensors"),
              metadata={"mono_quant.calibration": json.dumps(_edit(header, how))})
    with pytest.raises(ValueError, match=match):
        Calibrator.load(tmp_path / "bad.safetensors", net)


def test_mse_keeps_the_range_of_data_within_two_bins():
    """Below ~5e-10 the histogram holds the data in one or two bins: every shrink scored alike and
    the first (1/256 of the range) clipped 99% of the values (at 1e-28 .. 1e-35 here)."""
    torch.manual_seed(0)
    for scale in (1e-24, 1e-26, 1e-28, 1e-30, 1e-35):
        cal = Calibrator(nn.Identity(), extra_types=(nn.Identity,))  # (the default bins)
        x = torch.randn(512, 64) * scale
        cal.feed(x)
        r = cal.ranges("mse")["model.output"]
        assert r.hi == pytest.approx(float(x.abs().max()), rel=1e-6, abs=0), scale
