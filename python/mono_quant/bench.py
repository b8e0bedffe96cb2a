"""``mono-quant bench``: how much faster a quantized Linear is than fp32 on this machine.

Times quantized Linear layers against fp32 ``F.linear`` on the same (seeded random)
weight, interleaved call by call so that a busy machine slows both alike, and reports
medians and the speed-up.  The shapes come from ``--shape`` or from the quantized
Linear layers of a mono-quant file (its dtype and settings too); the weights are
random because the kernels' speed does not depend on their values.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from . import kernels
from .api import quantize
from .qtypes import get_qtype
from .timing import interleaved_medians

__all__ = ["BenchCase", "parse_shape", "cases_from_file", "check_options", "default_cases", "run_bench",
           "bench_header"]

DEFAULT_SHAPES = ((4096, 4096),)
DEFAULT_DTYPES = ("int8", "int4", "fp16")
DEFAULT_BATCHES = (1, 32)
MAX_FILE_CASES = 16  # distinct layer shapes timed from a file (an LLM has about five)
MAX_WEIGHT_ELEMENTS = 1 << 31  # a weight above 8 GB of fp32 is a typo, not a layer


@dataclass(frozen=True)
class BenchCase:
    """One Linear layer to time: ``out_features x in_features`` and how it is quantized."""

    out_features: int
    in_features: int
    dtype: str
    options: Tuple[Tuple[str, object], ...] = field(default=())
    names: Tuple[str, ...] = field(default=())  # the file's layers of this shape, if any


def parse_shape(text: str) -> Tuple[int, int]:
    """``"4096x11008"`` (out x in, as ``nn.Linear(in, out).weight.shape``) -> (4096, 11008)."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX*,]\s*(\d+)\s*", str(text))
    if not match:
        raise ValueError(f"--shape {text!r}: expected OUTxIN, two positive integers such as 4096x4096")
    out_features, in_features = int(match.group(1)), int(match.group(2))
    if out_features < 1 or in_features < 1:
        raise ValueError(f"--shape {text!r}: both sizes must be at least 1")
    if out_features * in_features > MAX_WEIGHT_ELEMENTS:
        raise ValueError(f"--shape {text!r}: {out_features * in_features} weights is more than this "
                         f"benchmark allocates ({MAX_WEIGHT_ELEMENTS}); give a layer's real shape")
    return out_features, in_features


def cases_from_file(path, dtypes: Optional[Sequence[str]] = None) -> Tuple[List[BenchCase], List[str]]:
    """The distinct quantized Linear shapes of a mono-quant .safetensors file, with the
    file's dtype and settings (``dtypes`` replaces the dtype).  Returns the cases and a
    note for each layer kind that is not timed (only Linear layers are)."""
    from .io.describe import describe

    from .static.persist import is_static_file
    from .static.persist_per_layer import is_per_layer_file

    if is_static_file(path) or is_per_layer_file(path):  # (it said "no quantized layers (a float checkpoint?)")
        raise ValueError(f"{path}: a static int8 model (activations='static'): bench times the Linear layers of "
                         f"dynamic int8, weight-only, int4 and fp16 files; time the static model itself (mq.load and "
                         f"call it), or give --shape OUTxIN")
    info = describe(path)
    config = info.get("config") or {}
    if not info["layers"]:
        raise ValueError(f"{path}: holds no quantized layers (a float checkpoint?); quantize it first "
                         "(mono-quant quantize SRC -o DST) or give --shape OUTxIN")
    grouped: Dict[tuple, List[str]] = {}
    untimed: Dict[str, int] = {}
    guessed: List[str] = []  # a state_dict file's 2-D tensors: Linear weights or embedding tables, it does not say
    for layer in info["layers"]:
        shape = layer["shape"]
        if layer.get("type") != "Linear" or len(shape) != 2:
            untimed[str(layer.get("type"))] = untimed.get(str(layer.get("type")), 0) + 1
            continue
        if layer.get("type_from") == "shape" and "Embedding" in str(layer.get("layer_kind", "")):
            guessed.append(layer["name"])
        for dtype in [get_qtype(d).name for d in dtypes] if dtypes else (layer["dtype"],):
            options = _file_options(dtype, layer, config)
            grouped.setdefault((shape[0], shape[1], dtype, options), []).append(layer["name"])
    cases = [BenchCase(o, i, d, opts, tuple(names)) for (o, i, d, opts), names in grouped.items()]
    cases.sort(key=lambda c: -c.out_features * c.in_features)
    notes = [f"{n} {kind} layer{'s' if n > 1 else ''} not timed (bench times Linear layers)"
             for kind, n in sorted(untimed.items())]
    if guessed:
        shown = ", ".join(guessed[:3]) + (f" and {len(guessed) - 3} more" if len(guessed) > 3 else "")
        notes.append(f"{len(guessed)} 2-D tensor{'s' if len(guessed) > 1 else ''} ({shown}) timed as Linear: a "
                     f"state_dict file does not say which are embedding tables (an embedding's lookup is not a "
                     f"matmul; quantize the model itself to tell them apart)")
    if len(cases) > MAX_FILE_CASES:
        notes.append(f"{len(cases) - MAX_FILE_CASES} smaller shapes not timed (the {MAX_FILE_CASES} largest are)")
        cases = cases[:MAX_FILE_CASES]
    if not cases:
        raise ValueError(f"{path}: no quantized Linear layer to time ({'; '.join(notes)}); give --shape OUTxIN")
    return cases, notes


def _file_options(dtype: str, layer: dict, config: dict) -> Tuple[Tuple[str, object], ...]:
    options = {}
    if dtype == layer["dtype"]:
        options["symmetric"] = layer["scheme"] == "symmetric"
        if dtype == "int4":
            options["group_size"] = layer["group_size"]
    if dtype == "int8":
        # the layer's own settings where the file keeps them (a model file: mixed precision gives each
        # layer its own), else the file's config (a state_dict file)
        own = dtype == layer["dtype"]
        options["activations"] = layer["activations"] if own and "activations" in layer \
            else config.get("activations", "dynamic")
        options["reduce_range"] = bool(layer["reduce_range"] if own and "reduce_range" in layer
                                       else config.get("reduce_range"))
    elif dtype == "uint8":  # (a file's int8 "dynamic" with --dtype uint8 was refused by quantize)
        options["activations"] = None
    return tuple(sorted(options.items()))


# the dtype each option applies to; with none of them among the dtypes timed, the option is a
# mistake (it was ignored without a word), as quantize refuses --group-size with --dtype int8
_OPTION_DTYPE = {"--weight-only": "int8", "--reduce-range": "int8", "--group-size": "int4"}


def check_options(dtypes: Sequence[str], weight_only: bool = False, reduce_range: bool = False,
                  group_size: Optional[int] = None) -> None:
    """ValueError (one line: what to drop or add) for an option that applies to none of ``dtypes``
    (names as ``get_qtype`` gives them), or for --reduce-range with --weight-only."""
    given = [flag for flag, on in (("--weight-only", weight_only), ("--reduce-range", reduce_range),
                                   ("--group-size", group_size is not None)) if on]
    for flag in given:
        if _OPTION_DTYPE[flag] not in dtypes:
            raise ValueError(f"{flag} applies to dtype {_OPTION_DTYPE[flag]} only, and bench times "
                             f"{', '.join(dtypes)}: drop {flag}, or add --dtype {_OPTION_DTYPE[flag]}")
    if weight_only and reduce_range:
        raise ValueError("--reduce-range quantizes the inputs of int8 dynamic layers, and --weight-only keeps "
                         "them float: drop one of them")


def default_cases(shapes: Iterable[Tuple[int, int]], dtypes: Iterable[str], weight_only: bool = False,
                  reduce_range: bool = False, group_size: Optional[int] = None) -> List[BenchCase]:
    """Every shape in every dtype, with the options of the dtypes they apply to (ValueError when
    one applies to none: :func:`check_options`)."""
    cases = []
    names = list(dict.fromkeys(get_qtype(d).name for d in dtypes))  # an unknown name fails here, with the closest
    check_options(names, weight_only, reduce_range, group_size)
    for out_features, in_features in shapes:
        for dtype in names:
            options = {}
            if dtype == "int8":
                options = {"activations": None if weight_only else "dynamic", "reduce_range": reduce_range}
            elif dtype == "uint8":  # weight-only always (quantize refuses activations="dynamic" for it)
                options = {"activations": None}
            elif dtype == "int4" and group_size is not None:
                options = {"group_size": group_size or None}
            cases.append(BenchCase(out_features, in_features, dtype, tuple(sorted(options.items()))))
    return cases


def run_bench(cases: Sequence[BenchCase], batches: Sequence[int] = DEFAULT_BATCHES,
              repeats: int = 20, warmup: int = 3) -> List[dict]:
    """Time every case at every batch size against fp32, interleaved; return one row each
    (``fp32_us`` / ``quantized_us`` medians, ``speedup`` = fp32 time / quantized time)."""
    if repeats < 1 or warmup < 0:
        raise ValueError("repeats must be at least 1 and warmup at least 0")
    if not batches or any(int(b) < 1 for b in batches):
        raise ValueError(f"batch sizes must be at least 1, got {list(batches)}")
    rows = []
    for n, case in enumerate(cases):
        generator = torch.Generator().manual_seed(n)
        layer = torch.nn.Linear(case.in_features, case.out_features)
        with torch.no_grad():
            layer.weight.normal_(0.0, case.in_features ** -0.5, generator=generator)
            layer.bias.normal_(0.0, 0.02, generator=generator)
        result = quantize(layer, dtype=case.dtype, **dict(case.options))
        if result.skipped:
            rows.append(_row(case, result.config, None, None, None, note=f"skipped: {result.skipped[0][2]}"))
            continue
        qlayer = result.model.eval()
        weight, bias = layer.weight.detach(), layer.bias.detach()
        for batch in batches:
            x = torch.randn(int(batch), case.in_features, generator=generator)
            med = interleaved_medians({"fp32": lambda: F.linear(x, weight, bias), "quantized": lambda: qlayer(x)},
                                      repeats, warmup)
            rows.append(_row(case, result.config, int(batch), med["fp32"] * 1e6, med["quantized"] * 1e6))
        del qlayer, result, layer, weight, bias
    return rows


def _mode(dtype: str, config, in_features: int) -> str:
    """How the layer was quantized, read from the result's config (a project's
    mono_quant.toml may have set what the command line did not); a group as wide as the
    row or wider is one group per channel."""
    if config is None:
        return "-"
    if dtype in ("int8", "uint8"):
        text = "weight-only" if config.activations is None else "dynamic"
        return text + (", reduce_range" if config.reduce_range and config.activations is not None else "")
    if dtype == "int4":
        if not config.group_size:
            return "per-channel"
        one = config.group_size >= -(-in_features // 32) * 32  # (rows are padded to 32 columns)
        return f"group {config.group_size}" + (f" (one: {in_features} inputs)" if one and config.group_size > in_features
                                               else "")
    return "weights"


def _row(case: BenchCase, config, batch, fp32_us, quant_us, note: str = "") -> dict:
    return {
        "shape": [case.out_features, case.in_features], "dtype": case.dtype, "mode": _mode(case.dtype, config, case.in_features),
        "batch": batch, "fp32_us": fp32_us, "quantized_us": quant_us,
        "speedup": (fp32_us / quant_us) if fp32_us and quant_us else None,
        "layers": list(case.names), "note": note,
    }


def bench_header() -> dict:
    """What the figures depend on: the kernel level, the int8 matmul, threads, torch."""
    info = kernels.cpu_info()
    return {"active_isa": info["active_isa"], "best_isa": info["best_isa"],
            "int8_matmul": kernels.linear_kernels()["dynamic"], "threads": kernels.num_threads(),
            "torch": torch.__version__}
