"""The row rules of kernels/row_rules.py: which CPUs count as running torch's BLAS at AVX-512
(MKL's AVX-512 sgemm runs on Intel CPUs only), the tables built for each, and the int8
weight-only and int4 rules applied inside the ops, so a graph exported with a dynamic row
count takes eager's path and bits on both sides of a rule."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mono_quant as mq
from mono_quant import _C
from mono_quant.formats import int4_weight, packed_linear
from mono_quant.kernels import row_rules
from mono_quant.kernels.fp16 import KERNEL_MAX_ROWS, half_path

NEVER = 1 << 62


def _caches(tmp_path, entries):
    for i, (level, kind, size) in enumerate(entries):
        d = tmp_path / f"index{i}"
        d.mkdir(parents=True)
        (d / "level").write_text(f"{level}\n")
        (d / "type").write_text(f"{kind}\n")
        (d / "size").write_text(f"{size}\n")
    return tmp_path


def test_l1d_size_from_sysfs_and_its_fallback(tmp_path):
    """The L1D class reads the level-1 data cache (not the instruction cache beside it); 32 KiB,
    the smaller class, where sysfs is missing or unreadable."""
    assert row_rules.l1d_bytes(_caches(tmp_path / "zen5", [(1, "Instruction", "32K"), (1, "Data", "48K"),
                                                           (2, "Unified", "1024K")])) == 48 << 10
    assert row_rules.l1d_bytes(_caches(tmp_path / "zen3", [(1, "Data", "32K"), (2, "Unified", "512K")])) == 32 << 10
    assert row_rules.l1d_bytes(tmp_path / "missing") == 32 << 10
    assert row_rules.l1d_bytes(_caches(tmp_path / "garbled", [(1, "Data", "lots")])) == 32 << 10


def test_half_panels_up_to_their_rows_and_width(monkeypatch):
    """fp16 / bf16 past the tiles' rows: the panel path within HALF_PANEL_MAX_ROWS rows and
    HALF_PANEL_MAX_IN_FEATURES inputs, torch's op on the converted weight past either."""
    for table, value in ((row_rules.HALF_KERNEL_MAX_ROWS, 8), (row_rules.HALF_PANEL_MAX_ROWS, 100),
                         (row_rules.HALF_PANEL_MAX_IN_FEATURES, 1024)):
        monkeypatch.setitem(table, "avx2", value)
    assert half_path(8, 3072, 768, "avx2") == "kernel"
    assert half_path(100, 1024, 768, "avx2") == "panels"
    assert half_path(101, 1024, 768, "avx2") == "torch" and half_path(100, 1025, 768, "avx2") == "torch"
    assert row_rules.HALF_PANEL_MAX_IN_FEATURES["avx512"] == NEVER  # (every width, where the level has panels)


@pytest.mark.parametrize("vendor, avx512f, expected", [
    ("GenuineIntel", True, True), ("GenuineIntel", False, False), ("AuthenticAMD", True, False),
    ("AuthenticAMD", False, False), ("", True, False), ("HygonGenuine", True, False)])
def test_blas_class_is_intel_with_avx512(vendor, avx512f, expected):
    assert row_rules.blas_runs_avx512({"vendor": vendor, "avx512f": avx512f}) == (
        expected and torch.backends.mkl.is_available())
    assert row_rules.blas_runs_avx512({}) is False  # an old build's cpu_info without the vendor


def test_this_machines_tables():
    info = _C.cpu_info()
    assert isinstance(info["vendor"], str) and len(info["vendor"]) <= 12
    assert row_rules.BLAS_AVX512 == row_rules.blas_runs_avx512(info)
    # the formats read the same table objects (tests and users patch them there)
    assert packed_linear.BLAS_MIN_ROWS is row_rules.INT8_WEIGHT_ONLY_BLAS_MIN_ROWS
    assert packed_linear.BLAS_MIN_IN_FEATURES is row_rules.INT8_WEIGHT_ONLY_BLAS_MIN_IN_FEATURES
    assert row_rules.INT8_WEIGHT_ONLY_BLAS_MIN_IN_FEATURES["avx2"] == 0
    assert int4_weight.BLAS_MIN_ROWS is row_rules.INT4_BLAS_MIN_ROWS
    assert int4_weight.BLAS_MAX_OUT_FEATURES is row_rules.INT4_BLAS_MAX_OUT_FEATURES
    assert KERNEL_MAX_ROWS is row_rules.HALF_KERNEL_MAX_ROWS
    # levels below AVX-512 and AMD's AVX-512 keep the int4 kernels at every row count; int8 weight-only
    # at the AVX2 level takes the BLAS from 512 rows on a CPU of a 32 KiB L1D, never on a wider one
    assert row_rules.INT4_BLAS_MIN_ROWS["avx2"] == NEVER
    assert row_rules.INT8_WEIGHT_ONLY_BLAS_MIN_ROWS["avx2"] == (512 if row_rules.SMALL_L1D else NEVER)
    # ... and from 256 rows for inputs of 2048 and more (the long reductions)
    assert row_rules.INT8_WEIGHT_ONLY_BLAS_LONG_K["avx2"] == ((256, 2048) if row_rules.SMALL_L1D else None)
    assert row_rules.INT8_WEIGHT_ONLY_BLAS_LONG_K["avx512"] is None
    assert row_rules.SMALL_L1D == (row_rules.L1D_BYTES <= 32 << 10) and row_rules.L1D_BYTES == row_rules.l1d_bytes()
    finite = row_rules.BLAS_AVX512
    assert (row_rules.INT8_WEIGHT_ONLY_BLAS_MIN_ROWS["avx512"] < NEVER) == finite
    assert (row_rules.INT4_BLAS_MIN_ROWS["avx512"] < NEVER) == finite
    assert (row_rules.HALF_KERNEL_MAX_ROWS["avx512"] < NEVER) == finite


def _layers(in_features=96, out_features=40):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(in_features, out_features))
    return {"int8 weight-only": mq.quantize(model, activations=None).model,
            "int4": mq.quantize(model, dtype="int4", group_size=32).model}


@pytest.fixture
def rules_at_5_rows(isa, monkeypatch):
    monkeypatch.setitem(packed_linear.BLAS_MIN_ROWS, isa, 5)
    monkeypatch.setitem(packed_linear.BLAS_MIN_IN_FEATURES, isa, 0)
    monkeypatch.setitem(int4_weight.BLAS_MIN_ROWS, isa, 5)
    monkeypatch.setitem(int4_weight.BLAS_MAX_OUT_FEATURES, isa, NEVER)
    return isa


@pytest.mark.parametrize("kind", ["int8 weight-only", "int4"])
def test_eager_takes_blas_from_the_rule_and_the_kernel_below(rules_at_5_rows, kind):
    model = _layers()[kind]
    layer = model[0]
    w = layer.dequantized_weight()
    for m in (4, 5, 6):
        x = torch.randn(m, 96)
        with torch.no_grad():
            y = model(x)
        blas = F.linear(x, w, layer.bias)
        assert torch.equal(y, blas) == (m >= 5) or rules_at_5_rows == "scalar", m
        torch.testing.assert_close(y, blas, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["int8 weight-only", "int4"])
def test_export_with_dynamic_rows_applies_the_rule_at_run_time(rules_at_5_rows, kind):
    """torch.export with a dynamic row count: the rule is the op's, on the real rows (a branch
    on the symbolic count would add a guard and refuse the range); eager's bits on both sides."""
    model = _layers()[kind]
    rows = torch.export.Dim("rows", min=1, max=4096)
    ep = torch.export.export(model, (torch.randn(8, 96),), dynamic_shapes=({0: rows},))
    for m in (1, 4, 5, 6, 33):
        x = torch.randn(m, 96)
        with torch.no_grad():
            assert torch.equal(ep.module()(x), model(x)), m
    x3 = torch.randn(3, 4, 96)  # 12 rows past the rule, as N-D
    with torch.no_grad():
        assert torch.equal(torch.export.export(model, (x3,)).module()(x3), model(x3))


@pytest.mark.parametrize("kind", ["int8 weight-only", "int4"])
def test_autograd_past_the_rule_reaches_the_input(rules_at_5_rows, kind):
    model = _layers()[kind]
    x = torch.randn(9, 96, requires_grad=True)
    model(x).sum().backward()
    w = model[0].dequantized_weight()
    torch.testing.assert_close(x.grad, w.sum(0).expand(9, 96), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("groups, bias", [(1, True), (2, True), (2, False)])
def test_weight_only_conv_keeps_its_kernel_past_the_linear_rule(rules_at_5_rows, groups, bias):
    """The Linear's BLAS rule is not the conv's: the op route of a weight-only conv (autograd,
    export) calls the kernel per group as eager does, whatever its im2col rows (it took the
    Linear's branch once: other bits, and a grouped conv's whole bias against one group)."""
    torch.manual_seed(groups)
    # 16 pixels and 256 outputs: the packed route (pixels * 8 <= outputs), 16 im2col rows > 5
    model = mq.quantize(nn.Sequential(nn.Conv2d(8 * groups, 256, 1, groups=groups, bias=bias)),
                        activations=None).model
    x = torch.randn(1, 8 * groups, 4, 4)
    with torch.no_grad():
        eager = model(x)
    traced = model(x.clone().requires_grad_(True)).detach()
    assert torch.equal(eager, traced)
    with torch.no_grad():
        assert torch.equal(torch.export.export(model, (x,)).module()(x), eager)


def test_narrow_weight_only_layers_keep_the_kernel_past_the_row_rule(isa, monkeypatch):
    """The weight-only BLAS rule also needs in_features >= BLAS_MIN_IN_FEATURES (on an Intel
    AVX-512 CPU 384-wide layers ran 0.96-1.02 of fp32's time on the tiles, 1.03-1.16 on BLAS):
    eager and an export with dynamic rows take the kernel below it and BLAS from it."""
    monkeypatch.setitem(packed_linear.BLAS_MIN_ROWS, isa, 5)
    monkeypatch.setitem(packed_linear.BLAS_MIN_IN_FEATURES, isa, 97)
    assert not row_rules.int8_weight_only_takes_blas(6, 96, 40, isa)
    assert (row_rules.int8_weight_only_takes_blas(6, 97, 40, isa)
            and not row_rules.int8_weight_only_takes_blas(4, 97, 40, isa))
    for k, blas in ((96, False), (97, True)):
        torch.manual_seed(k)
        model = mq.quantize(nn.Sequential(nn.Linear(k, 40)), activations=None).model
        layer = model[0]
        x = torch.randn(9, k)
        with torch.no_grad():
            y = model(x)
            ep = torch.export.export(model, (torch.randn(8, k),), dynamic_shapes=({0: torch.export.Dim("rows")},))
            assert torch.equal(ep.module()(x), y)
        want = F.linear(x, layer.dequantized_weight(), layer.bias)
        assert torch.equal(y, want) == blas or isa == "scalar", k


def test_small_weight_rule_on_the_shapes():
    for isa in ("scalar", "avx2"):  # the Intel rule, not measured there: off (the narrow rule below aside)
        assert not row_rules.small_weight_takes_blas(1 << 20, 128, 10, isa, fmt="half")
    on = row_rules.BLAS_AVX512  # Intel's MKL: a 128 -> 10 head from 1024 rows
    assert row_rules.small_weight_takes_blas(1024, 128, 10, "avx512", fmt="half") == on
    assert not row_rules.small_weight_takes_blas(1023, 128, 10, "avx512", fmt="int8_weight_only")
    assert not row_rules.small_weight_takes_blas(4096, 128, row_rules.SMALL_BLAS_MAX_OUT_FEATURES + 1, "avx512", fmt="half")
    assert not row_rules.small_weight_takes_blas(4096, 2049, 32, "avx512", fmt="half")  # past 65536 weights
    # int4 and fp16 / bf16 layers of at most 1024 inputs from 256 rows; int8 weight-only from 1024
    short = row_rules.SMALL_BLAS_SHORT_MAX_IN_FEATURES
    assert row_rules.small_weight_takes_blas(256, short, 32, "avx512", fmt="half") == on
    assert not row_rules.small_weight_takes_blas(255, short, 32, "avx512", fmt="half")
    assert not row_rules.small_weight_takes_blas(256, short + 128, 32, "avx512", fmt="half")
    assert not row_rules.small_weight_takes_blas(256, 512, 10, "avx512", fmt="int8_weight_only")
    assert not row_rules.int8_weight_only_takes_blas(256, 512, 10, "avx512")
    assert row_rules.int4_takes_blas(256, 10, 512, 128, "avx512", True) == on
    from mono_quant.kernels.fp16 import half_path
    assert (half_path(256, 512, 10, "avx512") == "torch") == on
    if on:  # ahead of AMX and of the large-weight rule
        assert row_rules.int8_weight_only_takes_blas(1024, 128, 10, "avx512")
        assert not row_rules.int8_weight_only_takes_amx(1024, 1024, 32, "avx512")
    # AMX-BF16 only from AMX_MIN_OUT_FEATURES outputs, for int8 weight-only and fp16 / bf16 alike
    assert not row_rules.int8_weight_only_takes_amx(512, 512, row_rules.AMX_MIN_OUT_FEATURES - 1, "avx512")
    assert not row_rules.half_takes_amx(512, row_rules.AMX_MIN_OUT_FEATURES - 1, "avx512")


def test_narrow_and_short_layers_take_the_blas():
    """Every CPU: a small weight of very few outputs or inputs (the kernels' padding and int4's
    activation pass outweigh its work) takes the BLAS, per format and level (NARROW_BLAS,
    SHORT_BLAS); the scalar level never; int4 at the AVX2 level from 64 up to 1023 rows."""
    rule = row_rules.small_weight_takes_blas
    for isa in ("avx2", "avx512"):
        # one output: from the first row (int8 weight-only, int4; fp16 at the AVX2 level)
        assert rule(1, 2000, 1, isa, fmt="int4") and rule(1, 768, 1, isa, fmt="int8_weight_only")
        assert rule(1, 768, 1, isa, fmt="half") == (isa == "avx2")
        assert rule(64, 768, 2, isa, fmt="int4") and rule(64, 768, 8, isa, fmt="int4")
        assert not rule(7, 768, 2, isa, fmt="int4") and not rule(63, 768, 9, isa, fmt="int4")
        assert rule(64, 64, 16, isa, fmt="int4") and not rule(3, 64, 16, isa, fmt="int4")
        assert rule(64, 32, 16, isa, fmt="half")
        assert not rule(1 << 20, 16384, 8, isa, fmt="int4")  # past 65536 weights: the kernels
        assert not rule(1 << 20, 8192, 10, isa, fmt="half")
    assert not rule(1 << 20, 768, 1, "scalar", fmt="int4")
    assert rule(8, 768, 2, "avx2", fmt="int4") and not rule(8, 768, 2, "avx512", fmt="int4")
    assert rule(64, 768, 2, "avx512", fmt="int8_weight_only") and not rule(64, 768, 2, "avx2", fmt="int8_weight_only")
    assert not rule(64, 64, 32, "avx512", fmt="int8_weight_only") and rule(64, 64, 32, "avx2", fmt="int8_weight_only")
    # int4 at the AVX2 level: every small weight of <= 1024 inputs at 64-1023 rows; 10 outputs at AVX-512: kernels
    assert rule(64, 768, 10, "avx2", fmt="int4") and rule(1023, 1024, 32, "avx2", fmt="int4")
    # (from 1024 rows the kernels: the AVX2 level's tables do not depend on the BLAS's class)
    assert not rule(64, 2048, 32, "avx2", fmt="int4") and not rule(1024, 768, 10, "avx2", fmt="int4")
    assert not rule(64, 768, 10, "avx512", fmt="int4") or row_rules.BLAS_AVX512
    # short layers: any number of outputs within 65536 weights (a coordinate MLP's Linear(3, 256))
    for isa in ("avx2", "avx512"):
        assert rule(64, 3, 256, isa, fmt="int4") and rule(64, 63, 1024, isa, fmt="half")
        assert rule(64, 3, 256, isa, fmt="int8_weight_only") and rule(4, 3, 256, isa, fmt="int4")
        assert not rule(3, 3, 256, isa, fmt="int4") and not rule(7, 63, 256, isa, fmt="half")
        assert not rule(1 << 20, 64, 1025, isa, fmt="half")  # past 65536 weights
    assert rule(64, 32, 512, "avx2", fmt="int8_weight_only") and not rule(64, 32, 512, "avx512", fmt="int8_weight_only")
    with pytest.raises(ValueError, match="unknown format"):
        rule(64, 768, 2, "avx2", fmt="int5")
    # int4_takes_blas asks it on the layer's own inputs (64, not its 128 padded columns)
    assert row_rules.int4_takes_blas(64, 16, 128, 128, "avx512", True, in_features=64)
    assert not row_rules.int4_takes_blas(64, 16, 128, 128, "avx512", True) or row_rules.BLAS_AVX512


@pytest.mark.parametrize("dtype", ["int8", "int4", "fp16"])
def test_a_narrow_head_takes_the_blas_in_eager_and_exported_graphs_alike(isa, dtype):
    """Heads of 1 and 2 outputs (the narrow rule's two tiers) and a 3-input layer of 256 outputs (the
    short rule): eager, the kept route and a graph
    exported with a dynamic row count give the same bits at 1-200 rows, across the rule's rows;
    where the rule holds, torch's linear on the dequantized weight."""
    torch.manual_seed(1)
    kwargs = {"activations": None} if dtype == "int8" else {}
    fmt = {"int8": "int8_weight_only", "int4": "int4", "fp16": "half"}[dtype]
    for inputs, outputs in ((768, 1), (768, 2), (3, 256)):
        model = mq.quantize(nn.Sequential(nn.Linear(inputs, outputs)), dtype=dtype, include=["0"], **kwargs).model
        layer = model[0]
        ep = torch.export.export(model, (torch.randn(8, inputs),), dynamic_shapes=({0: torch.export.Dim("rows")},))
        for m in (1, 7, 8, 63, 64, 200):
            x = torch.randn(m, inputs)
            with torch.no_grad():
                y = model(x)
                assert torch.equal(model(x), y) and torch.equal(ep.module()(x), y), (outputs, m)
                if row_rules.small_weight_takes_blas(m, inputs, outputs, isa, fmt=fmt):
                    w = layer.dequantized_weight() if dtype != "fp16" else layer._buffers["weight"].float()
                    assert torch.equal(y, F.linear(x, w, layer.bias)), (outputs, m)


@pytest.fixture
def small_rule_at_5_rows(isa, monkeypatch):
    monkeypatch.setitem(row_rules.SMALL_BLAS_MIN_ROWS, isa, 5)
    return isa


@pytest.mark.parametrize("dtype", ["int8", "int4", "fp16"])
def test_small_weight_rule_eager_kept_and_exported_agree(small_rule_at_5_rows, dtype):
    """A small, narrow weight past the small-weight rule: torch's linear on the float32 weight (kept
    by the layer), eager's bits in a graph exported with a dynamic row count, on both sides of the
    rule; a rewritten scale is seen."""
    torch.manual_seed(0)
    kwargs = {"activations": None} if dtype == "int8" else {"group_size": 32} if dtype == "int4" else {}
    model = mq.quantize(nn.Sequential(nn.Linear(96, 20)), dtype=dtype, **kwargs).model
    layer = model[0]
    ep = torch.export.export(model, (torch.randn(8, 96),), dynamic_shapes=({0: torch.export.Dim("rows")},))
    for m in (4, 5, 6, 33):
        x = torch.randn(m, 96)
        with torch.no_grad():
            y, again = model(x), model(x)
            assert torch.equal(y, again) and torch.equal(ep.module()(x), y), m
            blas = F.linear(x, layer.dequantized_weight(), layer.bias)
        if m >= 5:
            assert torch.equal(y, blas), m
        torch.testing.assert_close(y, blas, rtol=1e-2 if dtype == "int4" else 1e-4, atol=1e-2 if dtype == "int4" else 1e-4)
    x3 = torch.randn(3, 4, 96)
    with torch.no_grad():
        assert torch.equal(model(x3), F.linear(x3.reshape(12, 96), layer.dequantized_weight(), layer.bias).reshape(3, 4, 20))
    if dtype != "fp16":
        with torch.no_grad():
            layer.weight_scale.mul_(2.0)
            x = torch.randn(6, 96)
            assert torch.equal(model(x), F.linear(x, layer.dequantized_weight(), layer.bias))


def test_long_reductions_take_the_blas_from_their_own_row_count(monkeypatch):
    """INT8_WEIGHT_ONLY_BLAS_LONG_K: (rows, in_features) from which a weight-only layer takes the BLAS
    whatever the general row table says; None: only the general table."""
    monkeypatch.setitem(row_rules.INT8_WEIGHT_ONLY_BLAS_MIN_ROWS, "avx2", NEVER)
    monkeypatch.setitem(row_rules.INT8_WEIGHT_ONLY_BLAS_LONG_K, "avx2", (256, 2048))
    assert row_rules.int8_weight_only_blas_rows(256, 2048, "avx2")
    assert not row_rules.int8_weight_only_blas_rows(255, 2048, "avx2")
    assert not row_rules.int8_weight_only_blas_rows(256, 2047, "avx2")
    assert row_rules.int8_weight_only_takes_blas(300, 3072, 768, "avx2")
    monkeypatch.setitem(row_rules.INT8_WEIGHT_ONLY_BLAS_LONG_K, "avx2", None)
    assert not row_rules.int8_weight_only_takes_blas(300, 3072, 768, "avx2")
