"""quantize()'s refusals and warnings for calls that would otherwise do nothing
silently: include / exclude patterns that match no layer, a model with nothing
to quantize (or only layers quantized already), and a state_dict that is already quantized."""
from __future__ import annotations

import fnmatch
import warnings
from typing import Iterable, List, Mapping, Optional, Sequence, Tuple

from torch import nn

from .warn_site import warn_at_caller
from .errors import AlreadyQuantizedError, ConfigError
from .mixed import ALREADY_QUANTIZED, all_already_quantized
from .selection import of_type

__all__ = ["refuse_quantized_state_dict", "check_patterns_match", "holders_and_others", "layer_names_of_keys",
           "holder_names_of_keys", "warn_if_nothing_quantized", "warn_if_larger", "NothingQuantizedWarning",
           "LargerModelWarning", "UnmatchedPatternWarning", "QUANTIZED_SUFFIXES"]

# the integer weight of a mono-quant layer (beside it: weight_scale and weight_zero_point)
QUANTIZED_SUFFIXES = ("weight_qdata", "weight_packed")


class UnmatchedPatternWarning(UserWarning):
    """An include / exclude pattern from a config file matches no layer (the same pattern
    given as an argument raises ConfigError).

    A config file is shared by a project's models, so a pattern one model lacks
    is not an error.  What to do: check the pattern's spelling against
    ``[n for n, _ in model.named_modules()]``, or silence it with
    ``warnings.filterwarnings("ignore", category=UnmatchedPatternWarning)``.
    Import it from ``mono_quant.strictness``.
    """


class LargerModelWarning(UserWarning):
    """The quantized model takes more bytes than the float one (layers too small for
    the format's scales and packing).

    What to do: keep small layers float with ``min_weight_numel=`` (the
    message names the smallest layer), or use per-channel int8 rather than
    small int4 groups.  Import it from ``mono_quant.strictness``.
    """


class NothingQuantizedWarning(UserWarning):
    """quantize() found no layer to quantize: the result is the float model (a
    copy of the model as it was when every layer is quantized already).

    The message gives the first skipped layers and why.  What to do: read
    ``result.skipped``; check ``include`` / ``exclude`` / ``min_weight_numel``;
    layers an earlier call quantized are never quantized again (mixed
    precision: to change their format, quantize the float model); a model
    whose layers mono-quant does not replace (RNNs, nn.MultiheadAttention,
    custom layers) stays float (docs/huggingface.md has the coverage table).
    Import it from ``mono_quant.strictness``.
    """


def refuse_quantized_state_dict(sd: Mapping) -> None:
    """Raise AlreadyQuantizedError when ``sd`` holds a mono-quant layer's entries (an integer
    weight with its ``weight_zero_point``; other formats' ``weight_scale`` alone don't count).
    Unlike a model (mixed.py), a partly quantized state_dict is refused: its fp16 / bf16
    layers look like float entries, so quantizing "only the float ones" would round them twice."""
    for key in sd:
        if not isinstance(key, str):
            continue
        prefix, _, suffix = key.rpartition(".")
        if suffix in QUANTIZED_SUFFIXES and (f"{prefix}.weight_zero_point" if prefix else "weight_zero_point") in sd:
            raise AlreadyQuantizedError(
                f"the state_dict is already quantized by mono-quant (entry {key!r}): quantize the float "
                f"state_dict instead; to quantize only the layers it left float (mixed precision), load it into "
                f"the quantized model (mq.load) and quantize that model: a state_dict does not say which of its "
                f"float-looking entries (fp16 / bf16 layers) are already quantized")


def _first_few(entries: List[str], count: int = 10) -> str:
    """The first ``count`` entries and how many more (a list of 40,000 names made a 950 kB message)."""
    more = len(entries) - count
    return ", ".join(entries[:count]) + (f" (and {more} more)" if more > 0 else "")


def check_patterns_match(cfg, names: Sequence[str], modules: Iterable[nn.Module] = (),
                         holders: Iterable[Tuple[str, Optional[nn.Module]]] = (),
                         others: Iterable[Tuple[str, nn.Module]] = ()) -> None:
    """Raise ConfigError naming each ``include`` / ``exclude`` argument that matches none
    of ``names`` (the layers' names, of a model or a state_dict) nor, for a type, any of
    ``modules`` (the layers): a typo there would otherwise quantize everything (or nothing)
    silently.  A pattern that names only ``holders`` ((name, module) of the modules that hold
    layers without being one: a block, an encoder) is unmatched too, as selection looks at
    layers only: the message says to name the layers inside it.  One that names only ``others``
    ((name, module) of the modules that neither are nor hold layers: a norm, an activation) is
    unmatched, and the message says what it names.  Entries from a config file
    only warn (UnmatchedPatternWarning).  TypeError for an entry that is neither a str nor a type;
    ConfigError for a type when there are no modules (a state_dict's names, without ``model=``)."""
    modules = list(modules)
    holders = list(holders)
    others = list(others)
    # a state_dict / checkpoint: names only (a model always gives modules, its root at least)
    names_only = not modules and not others and all(m is None for _, m in holders)
    unmatched: List[str] = []
    from_file: List[str] = []
    for option in ("include", "exclude"):
        for pattern in getattr(cfg, option) or ():
            if not isinstance(pattern, (str, type)):
                raise TypeError(f"include/exclude entries must be name globs (str) or module types, got {pattern!r}")
            if names_only and isinstance(pattern, type):  # it could never match: not a spelling mistake
                raise ConfigError(
                    f"{option}={pattern.__name__}: module types need the model's modules, and a state_dict or a "
                    f"checkpoint file has names only: pass model= (a skeleton of the architecture, e.g. built on "
                    f"the meta device) to quantize(), or use name globs such as '*.q_proj' (quantize_checkpoint() "
                    f"takes globs only)")
            if isinstance(pattern, str):
                hit = any(fnmatch.fnmatchcase(n, pattern) for n in names)
                label = repr(pattern)
                held = [n for n, _ in holders if fnmatch.fnmatchcase(n, pattern)]
                other = [(n, m) for n, m in others if fnmatch.fnmatchcase(n, pattern)]
            else:
                hit = any(of_type(m, pattern) for m in modules)
                label = getattr(pattern, "__name__", repr(pattern))
                held = [n for n, m in holders if m is not None and isinstance(m, pattern)]
                other = [(n, m) for n, m in others if isinstance(m, pattern)]
            if not hit and held:  # e.g. exclude=["encoder"]: it excluded nothing inside the encoder
                label += (f" (it names {held[0] or '<root>'!r}, which holds layers but is none: "
                          f"{(held[0] + '.*') if held[0] else '*'!r} selects the layers inside it)")
            elif not hit and other:  # e.g. include=["norm"], a LayerNorm: nothing in or under it to quantize
                label += (f" (it names {other[0][0] or '<root>'!r}, a {type(other[0][1]).__name__}, which has no "
                          f"weight matrix to quantize and holds no layer)")
            if not hit:
                source = cfg.source.get(option, "argument")
                (unmatched if source == "argument" else from_file).append(f"{option}={label}")
    if from_file:  # a config file is shared by the models of a project: one that has no such layer is fine
        warn_at_caller(f"{_first_few(from_file)} from the config file match no layer of this model",
                       UnmatchedPatternWarning)
    if unmatched:
        shown = [n for n in names if n][:8]
        raise ConfigError(f"{_first_few(unmatched)} match{'es' if len(unmatched) == 1 else ''} no layer of the "
                          f"model: check the spelling (names look like {shown}{' ...' if len(names) > 9 else ''}; "
                          f"globs use fnmatch: 'encoder.*', '*.q_proj')")


def holders_and_others(layer_names: Iterable[str], modules: Iterable[Tuple[str, nn.Module]]
                       ) -> Tuple[List[Tuple[str, nn.Module]], List[Tuple[str, nn.Module]]]:
    """Split ``modules`` ((name, module) of a model's modules that are no layer) into
    ``check_patterns_match``'s holders (a path above a layer's: a block) and others (a norm, an
    activation: nothing to quantize in or under it)."""
    above = set()
    for name in layer_names:
        parts = name.split(".") if name else []
        above.update(".".join(parts[:i]) for i in range(len(parts)))  # ("a.b": "", "a")
    modules = list(modules)
    return [(n, m) for n, m in modules if n in above], [(n, m) for n, m in modules if n not in above]


def warn_if_nothing_quantized(layers, skipped) -> None:
    """Warn (NothingQuantizedWarning) when ``layers`` (the quantized ones) is empty, with the first reasons."""
    if layers:
        return
    if all_already_quantized(skipped):
        warn_at_caller(f"nothing was quantized: every layer mono-quant replaces is already quantized ({len(skipped)} "
                       f"layer(s), e.g. {skipped[0].name or '<root>'!r}: {skipped[0].reason}); the result is a copy "
                       f"of the model", NothingQuantizedWarning)
        return
    why = "; ".join(f"{s.name or '<root>'}: {s.reason}" for s in list(skipped)[:3])
    done = sum(s.reason.startswith(ALREADY_QUANTIZED) for s in skipped)
    warn_at_caller("nothing was quantized: the result holds the float weights"
                   + (f" (and {done} layer(s) quantized already, as they were)" if done else "")
                   + (f" ({len(skipped)} layer(s) skipped, e.g. {why})" if skipped else
                     " (the model has no layer mono-quant replaces)"),
                   NothingQuantizedWarning)


def layer_names_of_keys(keys: Iterable[str]) -> List[str]:
    """The layer names a state_dict's ``*.weight`` keys give (``"a.b.weight"``: ``"a.b"``), the
    names its quantization selects by."""
    return sorted({key[: -len(".weight")] if key != "weight" else "" for key in keys
                   if key == "weight" or key.endswith(".weight")})


def holder_names_of_keys(keys: Iterable[str]) -> List[Tuple[str, None]]:
    """The other module paths a state_dict's keys imply (``"a.b.weight"``: ``"a"``), as
    ``check_patterns_match``'s holders."""
    keys = list(keys)
    layers = set(layer_names_of_keys(keys))
    names = set()
    for key in keys:
        parts = key.split(".")[:-1]
        for i in range(1, len(parts) + 1):
            names.add(".".join(parts[:i]))
    return [(n, None) for n in sorted(names - layers)]


def warn_if_larger(report) -> None:
    """Warn (LargerModelWarning) when the quantized model takes more bytes than the float one."""
    before, after = report.model_bytes_before, report.model_bytes_after
    if report.layers and after > before:
        # the layer that grew most: a small one (scales, packing), or a narrow one of any size
        # (packed int8 pads the output channels to 16: Linear(300000, 4) grows 4x over int8)
        worst = max(report.layers, key=lambda r: r.bytes_after - r.bytes_before)
        shape = "x".join(str(d) for d in worst.shape)
        keep_float = f"exclude=[{worst.name!r}] or min_weight_numel=" if worst.name else "min_weight_numel="
        warn_at_caller(f"the quantized model takes {after} bytes, more than the float model's {before}: layer "
                       f"{worst.name or '<root>'!r} ({shape}) takes {worst.bytes_after} bytes quantized, "
                       f"{worst.bytes_before} float; small layers cost more in the format's scales and padding than "
                       f"they save, and so do narrow ones (packed int8 pads output channels to a multiple of 16); "
                       f"{keep_float} keeps such layers float", LargerModelWarning)
