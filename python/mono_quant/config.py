"""QuantConfig and config-file discovery.

Precedence: arguments given to ``quantize()`` > a config file > defaults.
The file is, in order: the path passed as ``config=``, else
``mono_quant.toml`` in the working directory, else the ``[tool.mono-quant]``
table of ``pyproject.toml`` there.  Unknown keys are logged as warnings;
invalid values raise :class:`~mono_quant.errors.ConfigError` (a
``ValueError``) naming the file.  A file's setting that applies to some
dtypes / activation modes only is dropped when the call chose others
(:func:`resolve_config`); docs/config.md states the rule.

``quantize()`` and ``quantize_checkpoint()`` share this options type and
:func:`resolve_options`, which turns their keyword arguments into one.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from .errors import ConfigError
from .formats.int4_weight import check_group_size, check_method
from .int_options import as_int
from .qtypes import get_qtype

__all__ = ["QuantConfig", "load_config_file", "find_config_file", "resolve_config", "resolve_options", "DEFAULT"]

log = logging.getLogger("mono_quant")

_GRANULARITIES = ("per_channel", "per_tensor")
_NONFINITE = ("error", "skip")
_WEIGHT_ONLY = ("none", "weight_only", "weight-only")
# options where None is a value (weight-only activations, per-channel int4), so "not given" is DEFAULT
_NONE_IS_A_VALUE = ("activations", "group_size")


class _Default:
    """The type of :data:`DEFAULT` (one instance)."""

    _instance = None

    def __new__(cls):
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "DEFAULT"

    def __reduce__(self):
        return "DEFAULT"


DEFAULT = _Default()
"""The default of ``activations`` and ``group_size`` in ``quantize()`` and
``quantize_checkpoint()``, where None is a value: "not given", so the config
file's setting applies, else the built-in default ("dynamic", 128)."""


class _EntryTypeError(ConfigError, TypeError):
    """An include / exclude entry of the wrong type: a ConfigError (naming the config file it came from) that
    is also the TypeError the layer selection raised before (``except TypeError`` keeps working)."""


@dataclass
class QuantConfig:
    """Every option ``quantize()`` and ``quantize_checkpoint()`` decide with.

    Pass one as ``config=`` to either; arguments given to the call win over
    it.  Also what a config file (``mono_quant.toml``, or ``[tool.mono-quant]``
    in ``pyproject.toml``) holds, with the same names.

    Args:
        dtype: "int8", "uint8", "int4", "fp16" or "bf16".
        symmetric: None means the scheme's default (int8 weights: symmetric,
            -127..127, what integer kernels want).
        granularity: "per_channel" (one scale per output channel) or "per_tensor".
        include: Module-name globs (a state_dict's key prefixes) or module
            types to quantize; None for all.
        exclude: Globs or types to leave in float; wins over ``include``.
        min_weight_numel: Layers with fewer weights stay float ("too small").
        nonfinite: "error" (raise, naming the layer) or "skip" (leave the
            layer in float, listed in ``skipped``).
        activations: For int8 weights, "dynamic" (inputs quantized to int8
            per row at each call, integer matmul), "static" (calibrated fixed
            scales; quantize() with calibration= data) or None (weight-only: float
            inputs times int8 weights).  A config file writes "none" for None.
        group_size: int4 only: columns per group along the input dimension,
            a positive multiple of 32; None (0 in a config file, which has
            no null) for one group per output channel.
        method: int4 only: "rtn", "mse" or "hqq"; None means "mse".
        embeddings: Also quantize nn.Embedding and nn.EmbeddingBag tables
            (weight-only, rows dequantized on lookup).
        reduce_range: int8 with activations="dynamic" only: quantize the
            activations to 7 bits (per row, asymmetric, 0..127) instead of 8,
            as torch.ao's and ONNX Runtime's ``reduce_range``: faster on AVX2
            CPUs without VNNI (Zen 2/3, Intel before Alder Lake), about 2 dB
            less SQNR.  Results stay bit-identical across CPUs.  Default off.
        observer: activations="static": how calibration picks each range:
            "minmax", "moving_average", "histogram" (entropy), "percentile",
            "entropy" or "mse".
        calibration_samples: activations="static": calibrate on at most
            this many samples (None: all the data given).
        source: Where non-default values came from (for the report); set
            by :func:`resolve_config`.

    Raises:
        ConfigError: A field is invalid (a ``ValueError``).

    Examples:
        >>> cfg = mq.QuantConfig(dtype="int4", group_size=64, exclude=["lm_head"])
        >>> qmodel, skipped = mq.quantize(model, config=cfg)
    """

    dtype: str = "int8"
    symmetric: Optional[bool] = None
    granularity: str = "per_channel"
    include: Optional[List[Any]] = None
    exclude: Optional[List[Any]] = None
    min_weight_numel: int = 0
    nonfinite: str = "error"
    activations: Optional[str] = "dynamic"
    group_size: Optional[int] = 128
    method: Optional[str] = None
    embeddings: bool = False
    reduce_range: bool = False
    # static int8 (activations="static", issue 12): the range observer and the samples to calibrate on
    observer: str = "minmax"
    calibration_samples: Optional[int] = None
    source: Dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        self.validate()

    def validate(self, origin: str = "QuantConfig") -> "QuantConfig":
        """Check every field and normalise it in place (dtype aliases, single globs).

        Args:
            origin: Where the values came from, for the error message.

        Returns:
            This config.

        Raises:
            ConfigError: A field is invalid (the message names it and ``origin``).
        """
        self._check_fields(origin)
        return self._check_combinations(origin)

    def _check_fields(self, origin: str) -> "QuantConfig":
        """validate()'s checks of each field on its own (normalised in place)."""
        try:
            self.dtype = get_qtype(self.dtype).name
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if self.symmetric is not None and not isinstance(self.symmetric, bool):
            raise ConfigError(f"{origin}: symmetric must be true, false or unset, got {self.symmetric!r}")
        if self.granularity not in _GRANULARITIES:
            raise ConfigError(f"{origin}: granularity must be one of {_GRANULARITIES}, got {self.granularity!r}")
        if self.nonfinite not in _NONFINITE:
            raise ConfigError(f"{origin}: nonfinite must be one of {_NONFINITE}, got {self.nonfinite!r}")
        if isinstance(self.activations, str) and self.activations.strip().lower() in _WEIGHT_ONLY:
            self.activations = None
        elif isinstance(self.activations, str) and self.activations.strip().lower() in ("dynamic", "static"):
            self.activations = self.activations.strip().lower()  # as dtype names: "Dynamic" was an error
        if self.activations not in ("dynamic", "static", None):
            raise ConfigError(f"{origin}: activations must be 'dynamic', 'static' or None ('none', weight-only), "
                             f"got {self.activations!r}")
        observers = ("minmax", "moving_average", "histogram", "percentile", "entropy", "mse")  # calibration.OBSERVERS
        if self.observer not in observers:
            raise ConfigError(f"{origin}: observer must be one of {', '.join(observers)}, got {self.observer!r}")
        if self.calibration_samples is not None:
            samples = as_int(self.calibration_samples)  # (numpy's integers too; not True)
            if samples is None or samples < 1:
                raise ConfigError(f"{origin}: calibration_samples must be a positive int or unset, "
                                  f"got {self.calibration_samples!r}")
            self.calibration_samples = samples
        numel = as_int(self.min_weight_numel)
        if numel is None or numel < 0:
            raise ConfigError(f"{origin}: min_weight_numel must be a non-negative int, got {self.min_weight_numel!r}")
        self.min_weight_numel = numel
        try:
            self.group_size = check_group_size(self.group_size)
            if self.method is not None:
                check_method(self.method)
        except ValueError as exc:
            raise ConfigError(f"{origin}: {exc}") from None
        if not isinstance(self.embeddings, bool):
            raise ConfigError(f"{origin}: embeddings must be true or false, got {self.embeddings!r}")
        if not isinstance(self.reduce_range, bool):
            raise ConfigError(f"{origin}: reduce_range must be true or false, got {self.reduce_range!r}")
        for name in ("include", "exclude"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, (str, type)) or not hasattr(value, "__iter__")):
                setattr(self, name, [value])  # a single glob or type
            elif value is not None:
                setattr(self, name, list(value))
            for entry in getattr(self, name) or ():
                if not isinstance(entry, (str, type)):
                    raise _EntryTypeError(f"{origin}: {name} entries must be module-name globs (str) or module "
                                          f"types, got {entry!r}")
        return self

    def _check_combinations(self, origin: str) -> "QuantConfig":
        """validate()'s checks of fields that depend on each other (after _check_fields)."""
        if self.reduce_range and (self.dtype != "int8" or self.activations != "dynamic"):
            raise ConfigError(f"{origin}: reduce_range (7-bit activations) applies to dtype 'int8' with "
                              f"activations='dynamic' only, got dtype {self.dtype!r}, activations "
                              f"{'weight_only' if self.activations is None else self.activations!r}")
        if self.method not in (None, "rtn") and self.dtype != "int4":
            raise ConfigError(f"{origin}: method={self.method!r} applies to dtype 'int4' only "
                              f"(dtype {self.dtype!r} uses round-to-nearest)")
        return self

    def symmetric_for(self, layer_type: str) -> bool:
        """The symmetric flag to use for a layer: explicit, else the default for the dtype.

        Args:
            layer_type: The float layer's class name ("Linear", "Conv2d", ...).

        Returns:
            Whether its weight is quantized symmetrically.
        """
        if self.symmetric is not None:
            return self.symmetric
        return get_qtype(self.dtype).name == "int8"

    def to_dict(self) -> Dict[str, Any]:
        """The options as plain data (types in include / exclude by name), as a manifest records them."""
        d = dataclasses.asdict(self)
        d.pop("source")
        for name in ("include", "exclude"):
            if d[name] is not None:
                d[name] = [v if isinstance(v, str) else getattr(v, "__name__", repr(v)) for v in d[name]]
        return d


_FIELDS = {f.name for f in dataclasses.fields(QuantConfig)} - {"source"}


def find_config_file(cwd: Optional[Union[str, os.PathLike]] = None) -> Optional[Path]:
    """``mono_quant.toml`` in ``cwd``, else ``pyproject.toml`` if it has ``[tool.mono-quant]``."""
    base = Path(cwd or os.getcwd())
    candidate = base / "mono_quant.toml"
    if candidate.is_file():
        return candidate
    pyproject = base / "pyproject.toml"
    if pyproject.is_file():
        try:
            data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            log.warning("ignoring %s: cannot read it as TOML (%s)", pyproject, exc)
            return None
        if "mono-quant" in data.get("tool", {}):
            return pyproject
    return None


def load_config_file(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """The settings in a config file as a dict (only known keys; others warned about)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise IsADirectoryError(f"config file {path} is a folder: give the TOML file itself "
                                f"(e.g. {path / 'mono_quant.toml'})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not valid TOML: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    if path.name == "pyproject.toml":
        data = data.get("tool", {}).get("mono-quant", {})
    elif "tool" in data and "mono-quant" in data["tool"]:
        data = data["tool"]["mono-quant"]
    settings = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in _FIELDS:
            log.warning("%s: unknown setting %r ignored (known: %s)", path, key, ", ".join(sorted(_FIELDS)))
            continue
        if name == "group_size" and value == 0 and not isinstance(value, bool):
            value = None  # TOML has no null: a config file's way to say per-channel int4
        settings[name] = value
    return settings


# Settings that apply to some dtypes / activation modes only: for each, the fields whose values
# make its value inapplicable in a config (none: it applies), and what it applies to.
_APPLIES_TO = {
    "group_size": (lambda c: () if c.dtype == "int4" else ("dtype",), "dtype 'int4'"),
    "method": (lambda c: () if c.method in (None, "rtn") or c.dtype == "int4" else ("dtype",), "dtype 'int4'"),
    "reduce_range": (lambda c: () if not c.reduce_range else tuple(
        name for name, bad in (("dtype", c.dtype != "int8"), ("activations", c.activations != "dynamic")) if bad),
        "dtype 'int8' with activations='dynamic'"),
    "symmetric": (lambda c: ("dtype",) if c.symmetric is not None and c.dtype in ("fp16", "bf16") else (),
                  "the integer dtypes"),
    "granularity": (lambda c: ("dtype",) if c.granularity != "per_channel" and c.dtype not in ("int8", "uint8")
                    else (), "dtypes 'int8' and 'uint8'"),
}
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(QuantConfig) if f.name in _APPLIES_TO}


def resolve_config(config=None, **arguments) -> QuantConfig:
    """Merge arguments over the config file over defaults.

    An argument that is :data:`DEFAULT` is not given; so is one that is None,
    except ``activations`` and ``group_size``, where None is a value
    (weight-only, per-channel int4).

    A setting of the file (or of a ``config=`` QuantConfig) that applies to
    some dtypes or activation modes only (``group_size``, ``method``,
    ``reduce_range``, ``symmetric``, ``granularity``) and does not apply to
    the dtype / activations the arguments (or the defaults) chose is dropped
    (back to its default): a project's file may hold int4 settings that an
    int8 call does not use.  When the file itself chose the dtype /
    activations it does not apply to, the file contradicts itself: a
    ConfigError naming the file.

    Args:
        config: A QuantConfig, a TOML file path, or None to look for
            ``mono_quant.toml`` / ``pyproject.toml`` in the working directory.
        **arguments: QuantConfig fields given by the caller.

    Returns:
        The merged, validated QuantConfig (``source`` says where each
        non-default value came from).

    Raises:
        ConfigError: A value (given or in the file) is invalid, or the file's
            settings contradict each other.
        FileNotFoundError: ``config`` names a file that does not exist.
    """
    given = {name: "none" if name == "activations" and value is None else value
             for name, value in arguments.items()
             if value is not DEFAULT and not (value is None and name not in _NONE_IS_A_VALUE)}
    path = None
    if isinstance(config, QuantConfig):
        base = dataclasses.replace(config)
        base.source = dict(config.source)
    else:
        if config is not None and not isinstance(config, (str, os.PathLike)):
            raise TypeError(f"config= takes a QuantConfig or the path of a TOML file, got {type(config).__name__}")
        path = Path(config) if config is not None else find_config_file()
        base = _from_file(load_config_file(path), path) if path is not None else QuantConfig()
    for name, value in given.items():
        setattr(base, name, value)
        base.source[name] = "argument"
    base._check_fields("quantize()")
    _drop_inapplicable(base, given, path)
    try:
        return base._check_combinations("quantize()")
    except ConfigError as exc:  # the caller's option against the file's dtype / activations: say where they are from
        chosen = [f"; {name} {_toml(getattr(base, name))} comes from config file {base.source[name]}"
                  for name in ("dtype", "activations") if base.source.get(name, "argument") != "argument"]
        raise ConfigError(f"{exc}{''.join(chosen)}") from None


def _from_file(settings: Dict[str, Any], path: Path) -> QuantConfig:
    """The QuantConfig of a config file's settings over the defaults; each value is checked
    on its own here (ConfigError naming the file), combinations by resolve_config."""
    cfg = QuantConfig()
    for name, value in settings.items():
        setattr(cfg, name, value)
    where = f"config file {path}"
    try:
        cfg._check_fields(where)
    except (TypeError, ValueError) as exc:
        message = str(exc)
        raise ConfigError(message if message.startswith(where) else f"{where}: {message}") from None
    cfg.source = {name: str(path) for name in settings}
    return cfg


def _drop_inapplicable(cfg: QuantConfig, given: Dict[str, Any], path: Optional[Path]) -> None:
    """Reset the settings of the file / QuantConfig (not of ``given``, the call's arguments) that do
    not apply to the dtype / activations chosen; ConfigError when the file chose both (see
    resolve_config).  Arguments that don't apply are left for the checks after, which refuse them."""
    for name, (inapplicable_because, applies_to) in _APPLIES_TO.items():
        because = inapplicable_because(cfg)
        if not because or name in given:
            continue
        from_file = path is not None and cfg.source.get(name) == str(path)
        if not from_file and getattr(cfg, name) == _DEFAULTS[name]:
            continue  # (a QuantConfig's default group_size with int8: nothing to drop)
        if from_file and all(cfg.source.get(d) == str(path) for d in because):
            chosen = " and ".join(f"{d} = {_toml(getattr(cfg, d))}" for d in because)
            raise ConfigError(f"config file {path}: {name} = {_toml(getattr(cfg, name), name)} applies to "
                              f"{applies_to} only, and the file sets {chosen}: remove one of them from the file")
        if from_file or (path is None and any(d in given for d in because)):
            log.info("%s: %s=%r applies to %s only: not used with %s", cfg.source.get(name, "QuantConfig"), name,
                     getattr(cfg, name), applies_to, ", ".join(f"{d}={getattr(cfg, d)!r}" for d in because))
            setattr(cfg, name, _DEFAULTS[name])
            cfg.source.pop(name, None)


def resolve_options(config=None, *, dtype=None, symmetric=None, granularity=None, include=None, exclude=None,
                    min_weight_numel=None, nonfinite=None, activations=DEFAULT, group_size=DEFAULT, method=None,
                    embeddings=None, reduce_range=None) -> QuantConfig:
    """The QuantConfig of the keyword arguments ``quantize()`` and ``quantize_checkpoint()`` share.

    Args: as :func:`~mono_quant.quantize` (None, or :data:`DEFAULT` for
    ``activations`` / ``group_size``, means not given).

    Returns:
        The merged QuantConfig (see :func:`resolve_config`).

    Raises:
        ConfigError: An invalid value, ``group_size`` given for a dtype
            without groups, ``granularity="per_tensor"`` for a dtype without it,
            or ``symmetric`` / ``activations="dynamic"`` for fp16 / bf16 / uint8.
    """
    cfg = resolve_config(config, dtype=dtype, symmetric=symmetric, granularity=granularity, include=include,
                         exclude=exclude, min_weight_numel=min_weight_numel, nonfinite=nonfinite,
                         activations=activations, group_size=group_size, method=method, embeddings=embeddings,
                         reduce_range=reduce_range)
    if group_size is not DEFAULT and cfg.dtype != "int4":  # given with a format that has no groups: a mistake
        raise ConfigError(f"group_size applies to dtype 'int4' only; {_how_stored(cfg.dtype)}{_dtype_from(cfg)}")
    if granularity == "per_tensor" and cfg.dtype not in ("int8", "uint8"):  # was ignored without a word
        raise ConfigError(f"granularity='per_tensor' applies to dtypes 'int8' and 'uint8' only; "
                          f"{_how_stored(cfg.dtype)}{_dtype_from(cfg)}")
    if cfg.dtype in ("fp16", "bf16"):  # options of the integer formats, accepted and ignored before
        if symmetric is not None:
            raise ConfigError(f"symmetric applies to the integer dtypes only; {_how_stored(cfg.dtype)} "
                              f"(no zero-points): drop symmetric={_dtype_from(cfg)}")
        if isinstance(activations, str) and activations.lower() == "dynamic":
            raise ConfigError(f"activations={activations!r} applies to dtype 'int8' only; {cfg.dtype} layers take "
                              f"float inputs: drop activations=")
    if cfg.dtype == "uint8" and cfg.activations == "dynamic":  # no uint8 kernel quantizes inputs: weight-only
        if isinstance(activations, str):
            raise ConfigError(f"activations={activations!r} applies to dtype 'int8' (and int4) only; uint8 layers "
                              f"take float inputs (weight-only): drop activations=, or use dtype 'int8'")
        cfg.activations = None  # (its layers said "dynamic" and ran weight-only)
    return cfg


def _dtype_from(cfg: QuantConfig) -> str:
    """``; dtype "int8" comes from config file X`` when a file chose the dtype an argument does not fit."""
    origin = cfg.source.get("dtype", "argument")
    return "" if origin == "argument" else f"; dtype {_toml(cfg.dtype)} comes from config file {origin}"


def _toml(value, name: str = "") -> str:
    """A setting's value as a config file writes it (true, "none", "int8"; a None group_size is 0)."""
    if value is None:
        return "0" if name == "group_size" else '"none"'
    return str(value).lower() if isinstance(value, bool) else (f'"{value}"' if isinstance(value, str) else repr(value))


def _how_stored(dtype: str) -> str:
    """How a dtype's weights are stored, for the errors above."""
    if dtype == "int4":
        return ("int4 has one scale per group of group_size columns (group_size=None: one group per output "
                "channel)")
    if dtype in ("fp16", "bf16"):
        return f"{dtype} is a cast of each weight, with no scales"
    return f"{dtype} is quantized per channel (granularity='per_channel') or per tensor"
