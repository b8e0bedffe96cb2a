"""Calibrator: record activation statistics of an unmodified model, derive ranges later.

    cal = Calibrator(model)
    cal.feed(loader, calibration_samples=512)      # tensors, (x, y) tuples, dicts, a callable...
    cal.save("resnet8.calib.safetensors")          # safetensors + JSON, no pickle
    ranges = cal.ranges(observer="entropy")        # any observer, no second pass over the data

Capture is by module hooks: the inputs and outputs of Conv/Linear/BatchNorm/
activation/pooling modules (``CAPTURED_TYPES`` plus ``extra_types``).  An
input that is the output of a captured module in the same forward is not
observed twice: it is recorded as an alias (unless the tensor was changed in
place since, or the input also took other tensors: then it is observed
itself, from the aliased statistics on).  Operations that are not
modules (``x + y``, ``torch.cat``, ``F.relu``) cannot be hooked;
``uncaptured_ops()`` lists them (via torch.fx when the model traces).

The caller's model is never modified: hooks are removed and every module's
train/eval flag restored after each ``feed``, which runs under
``torch.no_grad()`` in eval mode.
"""
from __future__ import annotations

import copy
import inspect
import json
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple, Union

import numpy as np
import torch
from safetensors import safe_open
from safetensors.numpy import save_file
from torch import nn

from ..warn_site import warn_at_caller
from ..io.untrusted_json import loads_bounded
from .histogram import DEFAULT_BINS
from .ranges import entropy_range, mse_range, percentile_range, qparams_for_range, quant_range
from .stats import EMA_CONSTANT, ActivationStats

__all__ = ["Calibrator", "refuse_top_level_tuple", "ActivationRange", "CAPTURED_TYPES", "OBSERVERS", "MIN_RECOMMENDED_SAMPLES",
           "CalibrationWarning", "bare_runner"]

CAPTURED_TYPES: Tuple[type, ...] = (
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.Linear,
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm,
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardtanh, nn.GELU, nn.SiLU, nn.Hardswish, nn.Sigmoid, nn.Tanh,
    nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
)
OBSERVERS = ("minmax", "moving_average", "histogram", "percentile", "entropy", "mse")
MIN_RECOMMENDED_SAMPLES = 100
_FORMAT = "mono_quant.calibration/1"
_META_KEY = "mono_quant.calibration"


class CalibrationWarning(UserWarning):
    """Calibration data that will give poor ranges (too few samples, NaN/Inf)."""


@dataclass(frozen=True)
class ActivationRange:
    """A calibrated range and the qparams it gives (int8 -127..127 symmetric by default)."""
    lo: float
    hi: float
    scale: float
    zero_point: int
    qmin: int
    qmax: int
    observer: str


def _first_dim(obj) -> Optional[int]:
    if isinstance(obj, torch.Tensor):
        return int(obj.shape[0]) if obj.dim() else 1
    if isinstance(obj, dict):
        for v in obj.values():
            n = _first_dim(v)
            if n is not None:
                return n
    if isinstance(obj, (list, tuple)):
        for v in obj:
            n = _first_dim(v)
            if n is not None:
                return n
    return None


def _takes_one_input(model, x) -> bool:
    """Whether ``model``'s forward can be called with ``x`` alone (True when its signature can't be read;
    a static graph's forward takes ``*args``: it says itself)."""
    accepts = getattr(model, "accepts_arguments", None)
    if callable(accepts):
        return bool(accepts((x,), {}))
    try:
        inspect.signature(model.forward).bind(x)
    except TypeError:
        return False
    except ValueError:
        return True
    return True


def _truncate(obj, n: int):
    """The first n items along dim 0 of every tensor in a batch."""
    if isinstance(obj, torch.Tensor):
        return obj[:n] if obj.dim() else obj
    if isinstance(obj, dict):
        return {k: _truncate(v, n) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_truncate(v, n) for v in obj)
    return obj


class Calibrator:
    """Streaming activation statistics of ``model``'s captured modules.

    ``bins``: histogram bins per activation (None: min/max only, the cheapest);
    ``per_channel``: also per-channel min/max over axis 1; ``extra_types``:
    more module types to capture (e.g. a user's ``Add`` module: each tensor
    input is observed).  Statistics live in ``self.stats`` keyed
    ``"<module>.output"`` / ``"<module>.input"`` (``.input1`` ... for more inputs).
    """

    def __init__(self, model: nn.Module, *, bins: Optional[int] = DEFAULT_BINS, per_channel: bool = True,
                 extra_types: Iterable[type] = (), ema_constant: float = EMA_CONSTANT,
                 batch_size: int = 64) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"Calibrator needs a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.bins = bins
        self.per_channel = per_channel
        self.ema_constant = ema_constant
        self.batch_size = int(batch_size)
        self.types = CAPTURED_TYPES + tuple(extra_types)
        self.stats: Dict[str, ActivationStats] = {}
        self.aliases: Dict[str, str] = {}   # input point -> the output point holding the same tensor
        self.samples = 0
        self.nonfinite = 0

    # ---- capture ----------------------------------------------------------------------
    def captured_modules(self) -> List[Tuple[str, nn.Module]]:
        return [(name or "model", m) for name, m in self.model.named_modules() if isinstance(m, self.types)]

    def _observe(self, point: str, t: torch.Tensor) -> None:
        s = self.stats.get(point)
        if s is None:
            s = self.stats[point] = ActivationStats(self.bins, self.per_channel, self.ema_constant)
        self.nonfinite += s.update(t)

    def _install_hooks(self):
        """(hook handles, the dict of this forward's outputs to clear after each batch)."""
        # this forward's outputs, by tensor identity: (the tensor, its point, its version then)
        produced: Dict[int, Tuple[weakref.ref, str, Optional[int]]] = {}

        def pre_hook(name):
            def hook(module, args):
                k = 0
                for a in args:
                    if not isinstance(a, torch.Tensor) or not a.is_floating_point():
                        continue
                    point = f"{name}.input" + (str(k) if k else "")
                    k += 1
                    seen = produced.get(id(a))
                    # an alias holds only while the tensor is what was observed (an uncaptured in-place
                    # op - relu_(), Hardswish(inplace=True), mul_ - changes it after) and while the
                    # input never took anything else (a shared layer applied to its own output)
                    if seen is not None and seen[0]() is a and seen[2] == _version(a) and point not in self.stats \
                            and self.aliases.get(point, seen[1]) == seen[1]:
                        self.aliases[point] = seen[1]
                        continue
                    if point in self.aliases:  # observed itself from here on, starting from what it aliased
                        self.stats[point] = copy.deepcopy(self.stats[self.aliases.pop(point)])
                    self._observe(point, a)
            return hook

        def post_hook(name):
            def hook(module, args, out):
                if isinstance(out, torch.Tensor) and out.is_floating_point():
                    point = f"{name}.output"
                    self._observe(point, out)
                    produced[id(out)] = (weakref.ref(out), point, _version(out))
            return hook

        handles = []
        for name, m in self.captured_modules():
            handles.append(m.register_forward_pre_hook(pre_hook(name)))
            handles.append(m.register_forward_hook(post_hook(name)))
        return handles, produced

    # ---- feeding ------------------------------------------------------------------------
    def _batches(self, data) -> Iterable[Any]:
        refuse_top_level_tuple(data)
        if isinstance(data, torch.Tensor):
            for i in range(0, data.shape[0], self.batch_size):
                yield data[i:i + self.batch_size]
        elif isinstance(data, dict):
            yield data
        elif isinstance(data, (str, bytes)):
            raise TypeError("calibration data must be tensors, (x, y) tuples, dicts, an iterable of those "
                            "or a callable that runs the model; got a string")
        else:
            try:
                it = iter(data)
            except TypeError:
                raise TypeError(f"calibration data of type {type(data).__name__} is not a tensor, dict, iterable "
                                "or callable") from None
            for item in it:
                yield item

    def _run(self, batch) -> None:
        if isinstance(batch, torch.Tensor):
            self.model(batch)
        elif isinstance(batch, dict):
            self.model(**batch)
        elif isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
            try:
                self.model(batch[0])  # (x, y) or [x, ...]: the first element is the input
            except TypeError as exc:  # a model of several inputs given them as a tuple: say how it was read
                if len(batch) < 2 or _takes_one_input(self.model, batch[0]):
                    raise
                raise TypeError(f"{exc}; a calibration batch that is a {type(batch).__name__} is read as (input, "
                                f"target): only its first element is passed to the model. For a model of several "
                                f"inputs give dict batches ({{argument name: tensor}}) or a callable that runs "
                                f"the model") from exc
        else:
            raise TypeError(f"a calibration batch must be a tensor, an (x, y) tuple or a dict, got "
                            f"{type(batch).__name__}")

    def feed(self, data, calibration_samples: Optional[int] = None) -> int:
        """Run ``data`` through the model and record statistics; returns the samples used.

        ``data``: a tensor (split into ``batch_size`` batches), a list / iterable /
        DataLoader of tensors, ``(x, y)`` tuples (x is used) or dicts (called as
        ``model(**batch)``), or a callable that runs the model (called with the
        model when it takes an argument).  At most ``calibration_samples``
        samples (first-dimension items) are used; the last batch is cut to fit.
        Warns (CalibrationWarning) when NaN/Inf were seen.
        """
        if calibration_samples is not None and calibration_samples < 1:
            raise ValueError(f"calibration_samples must be >= 1, got {calibration_samples}")
        if calibration_samples is not None and _is_runner(data):  # (it was ignored: every sample counted)
            raise ValueError(f"calibration_samples={calibration_samples} caps the batches fed to the model, but "
                             f"the calibration data is a callable that runs the model itself: cap the data inside "
                             f"it, or pass the data (a tensor, a list of batches, a DataLoader)")
        training = {m: m.training for m in self.model.modules()}
        nonfinite_before = self.nonfinite
        handles, produced = self._install_hooks()
        used = 0
        try:
            self.model.eval()
            with torch.no_grad():
                if _is_runner(data):
                    data() if bare_runner(data) else data(self.model)
                    used = max((s.samples for s in self.stats.values()), default=0) - self.samples
                else:
                    for batch in self._batches(data):
                        n = _first_dim(batch)
                        if n == 0:  # an empty batch: nothing to observe (it was counted as a sample)
                            continue
                        n = 1 if n is None else n
                        if calibration_samples is not None:
                            if used >= calibration_samples:
                                break
                            if used + n > calibration_samples:
                                batch, n = _truncate(batch, calibration_samples - used), calibration_samples - used
                        self._run(batch)
                        produced.clear()
                        used += n
        finally:
            for h in handles:
                h.remove()
            for m, flag in training.items():
                m.training = flag
        self.samples += used
        if self.nonfinite > nonfinite_before:
            bad = {p: s.nonfinite for p, s in self.stats.items() if s.nonfinite}
            warn_at_caller(f"calibration saw {self.nonfinite - nonfinite_before} NaN/Inf activation values "
                           f"(skipped in every statistic); per activation so far: {bad}", CalibrationWarning)
        return used

    # ---- results -----------------------------------------------------------------------------
    def nbytes(self) -> int:
        """Bytes of all tracked statistics: depends on bins and channels, not on samples."""
        return sum(s.nbytes() for s in self.stats.values())

    def ranges(self, observer: str = "minmax", *, encoding: str = "int8", symmetric: bool = True,
               percentile: float = 99.99, one_sided_levels: Optional[int] = None) -> Dict[str, ActivationRange]:
        """Range and qparams of every observed activation under ``observer`` (see OBSERVERS).

        ``one_sided_levels``: the codes a never-negative activation will get (static int8 gives
        255 on [0, max]); the entropy search matches its levels to them (ranges.entropy_range).

        "histogram" is the best histogram method for int8 here (entropy);
        warns when fewer than MIN_RECOMMENDED_SAMPLES samples were fed."""
        if observer not in OBSERVERS:
            raise ValueError(f"observer must be one of {', '.join(OBSERVERS)}, got {observer!r}")
        if not self.stats:
            raise RuntimeError("no statistics: feed() calibration data first (and check the model has "
                               f"modules of the captured types: {', '.join(t.__name__ for t in self.types[:6])}, ...)")
        if self.samples < MIN_RECOMMENDED_SAMPLES:
            warn_at_caller(f"calibrated on {self.samples} samples; ranges are unreliable below "
                           f"{MIN_RECOMMENDED_SAMPLES}", CalibrationWarning)
        qmin, qmax = quant_range(encoding, symmetric)
        out = {}
        for point, s in self.stats.items():
            if observer in ("minmax", "moving_average") or s.histogram is None:
                if observer not in ("minmax", "moving_average"):
                    raise ValueError(f"observer {observer!r} needs histograms: create the Calibrator with bins set")
                if not s.has_data:
                    lo = hi = 0.0
                elif observer == "minmax":
                    lo, hi = float(s.min[0]), float(s.max[0])
                else:
                    lo, hi = s.ema_min, s.ema_max
                if symmetric:  # what the symmetric qparams represent
                    t = max(-min(lo, 0.0), max(hi, 0.0))
                    lo, hi = -t, t
            elif observer == "percentile":
                lo, hi = percentile_range(s.histogram, percentile, symmetric)
            elif observer == "mse":
                lo, hi = mse_range(s.histogram, encoding, symmetric)
            else:  # "entropy", "histogram"
                lo, hi = entropy_range(s.histogram, encoding, symmetric, one_sided_levels=one_sided_levels)
            scale, zp = qparams_for_range(lo, hi, encoding, symmetric)
            out[point] = ActivationRange(lo, hi, scale, zp, qmin, qmax, observer)
        return out

    def uncaptured_ops(self) -> List[Tuple[str, str]]:
        """(node, operation) of the model's computations that are not modules, so hooks can't see
        them (residual ``+``, ``torch.cat``, functional activations), from a torch.fx trace; one
        ("<model>", reason) entry when the model can't be traced."""
        ignored = {"size", "view", "reshape", "flatten", "contiguous", "dim", "permute", "transpose",
                   "getattr", "getitem", "unsqueeze", "squeeze"}
        try:
            graph = torch.fx.Tracer().trace(self.model)
        except Exception as e:  # noqa: BLE001 - any tracing failure is reported, not raised
            return [("<model>", f"torch.fx could not trace the model ({type(e).__name__}: {e})")]
        found = []
        for node in graph.nodes:
            if node.op not in ("call_function", "call_method"):
                continue
            name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
            if name in ignored:
                continue
            found.append((node.name, name))
        return found

    # ---- persistence -------------------------------------------------------------------------
    def save(self, path: Union[str, Path]) -> None:
        """Statistics to a safetensors file (arrays) with a JSON header entry (scalars); no pickle."""
        arrays, points = {}, {}
        for point, s in self.stats.items():
            a, meta = s.to_arrays_and_meta()
            for k, v in a.items():
                arrays[f"{point}/{k}"] = np.ascontiguousarray(v)
            points[point] = meta
        header = {"format": _FORMAT, "samples": self.samples, "nonfinite": self.nonfinite, "bins": self.bins,
                  "per_channel": self.per_channel, "aliases": self.aliases, "points": points}
        save_file(arrays, str(path), metadata={_META_KEY: json.dumps(header)})

    @classmethod
    def load(cls, path: Union[str, Path], model: nn.Module) -> "Calibrator":
        """A Calibrator for ``model`` holding the statistics saved at ``path`` (validated:
        ValueError names what is wrong).  More data can be fed on top."""
        try:
            with safe_open(str(path), framework="numpy") as f:
                meta = f.metadata() or {}
                arrays = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # noqa: BLE001 - safetensors raises several types for a bad file
            raise ValueError(f"{path}: not a readable safetensors file ({e})") from e
        try:
            header = _mapping(loads_bounded(meta[_META_KEY]), "the header")
            if header.get("format") != _FORMAT:
                raise ValueError(f"format {header.get('format')!r}, expected {_FORMAT!r}")
            bins = header["bins"]
            if bins is not None and (not isinstance(bins, int) or isinstance(bins, bool) or bins < 1):
                raise ValueError(f"bins {bins!r}: a positive int or null")
            cal = cls(model, bins=bins, per_channel=bool(header["per_channel"]))
            cal.samples, cal.nonfinite = int(header["samples"]), int(header["nonfinite"])
            if cal.samples < 0 or cal.nonfinite < 0:
                raise ValueError("negative sample counts")
            cal.aliases = {str(k): str(v) for k, v in _mapping(header["aliases"], "aliases").items()}
            for point, pmeta in _mapping(header["points"], "points").items():
                prefix = f"{point}/"
                own = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
                cal.stats[point] = ActivationStats.from_arrays_and_meta(own, _mapping(pmeta, f"point {point!r}"))
        except (KeyError, TypeError, ValueError, OverflowError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: invalid calibration statistics: {type(e).__name__}: {e}") from e
        return cal


def _version(t: torch.Tensor) -> Optional[int]:
    """``t``'s in-place version counter; None for an inference-mode tensor, which keeps none."""
    try:
        return t._version
    except RuntimeError:
        return None


def refuse_top_level_tuple(data) -> None:
    """TypeError for ``(X, Y)`` passed as the data itself: iterated, it fed the targets to the model as
    inputs (wrong ranges, or a dtype error far from the cause).  (x, y) tuples are batches, inside a list
    or a loader."""
    if isinstance(data, tuple) and any(isinstance(t, torch.Tensor) for t in data):
        shapes = ", ".join(f"{tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__ for t in data)
        raise TypeError(f"calibration data is a tuple ({shapes}): pass the inputs themselves (a tensor is split "
                        f"into batches), a list of batches, or a DataLoader; an (inputs, targets) pair is read "
                        f"as a batch inside a list ([(X, Y)]), where the inputs are used")


def _is_runner(data) -> bool:
    """Whether calibration ``data`` is a callable that runs the model (not data to feed it)."""
    return callable(data) and not isinstance(data, (nn.Module, torch.Tensor)) and not hasattr(data, "__iter__")


def bare_runner(data) -> bool:
    """Whether calibration ``data`` is a callable that runs the model without being given it (it takes no
    argument: it runs whatever model it holds, which the calibrator's hooks may not be on)."""
    return _is_runner(data) and not inspect.signature(data).parameters


def _mapping(value, what: str) -> dict:
    """``value`` when it is a JSON object; a file's other JSON there raised AttributeError on .items()."""
    if not isinstance(value, dict):
        raise TypeError(f"{what} must be a JSON object, got {type(value).__name__}")
    return value
