"""mono-quant as a Hugging Face ``transformers`` quantization method.

    from mono_quant.integrations.transformers import MonoQuantConfig
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=MonoQuantConfig(dtype="int8"))
    model.save_pretrained("out")                          # the quantized buffers + the layer list in config.json
    again = AutoModelForCausalLM.from_pretrained("out")   # the same quantized model, bit for bit

Importing this module registers ``quant_method="mono_quant"`` through
transformers' public hooks (``register_quantization_config`` /
``register_quantizer``); it must be imported before ``from_pretrained`` of a
saved folder (``mono_quant.MonoQuantConfig`` imports it too).  transformers
5.24 has no other way in: its quantizers come from its own table and these
two calls (no entry points), and ``trust_remote_code`` imports model / config
classes, not quantizers.  Without the import transformers skips the unknown
method with a warning that prints the saved ``quant_method``, and loads a float
model whose quantized layers are MISSING (randomly initialized); so a saved
folder's ``quant_method`` is :data:`SAVED_QUANT_METHOD`, which says what to do
in that warning (``"mono_quant"``, what older folders carry, loads too).

- Quantizing while loading: the float weights load as usual, then
  :func:`mono_quant.quantize` with the config's options replaces the layers in
  place (what ``quantize(model)`` gives, layer for layer).
- A saved quantized folder: before the weights are read, the layers listed in
  ``quantization_config.layers`` (class, constructor arguments, tensor specs:
  the manifest entries :func:`mono_quant.save` writes) are replaced by empty
  quantized modules that transformers fills from the safetensors files; each
  layer is then validated as :func:`mono_quant.load` validates a file.
"""
from __future__ import annotations

import copy
import difflib
import weakref
from typing import Any, Dict, List, Optional

import torch
from torch import nn
from transformers.quantizers.auto import (AUTO_QUANTIZATION_CONFIG_MAPPING, AUTO_QUANTIZER_MAPPING,
                                          register_quantization_config, register_quantizer)
from transformers.quantizers.base import HfQuantizer
from transformers.utils.quantization_config import QuantizationConfigMixin

from ..warn_site import warn_at_caller
from ..errors import ConfigError
from ..io.composites import check_loaded_float_parameters, expand_shells, float_parameter_keys
from ..io.errors import CheckpointError
from ..io.layers import own_tensors, quantized_layer_entries
from ..io.manifest import layer_key, quantized_class
from ..io.validate import check_layer
from ..io.dtypes import dtype_from_name
from ..modules.composite import QuantizedComposite
from ..modules.registry import QuantizedModule
from .hf_layer_list import check_config_layers, unlisted_tensors
from .hf_resize import guard_resize_token_embeddings

__all__ = ["MonoQuantConfig", "MonoQuantHfQuantizer", "QUANT_METHOD", "SAVED_QUANT_METHOD"]

QUANT_METHOD = "mono_quant"
#: the ``quant_method`` of a saved folder's config.json: when mono_quant is not imported,
#: transformers warns "Unknown quantization type, got <this> ... we will skip the quantization"
SAVED_QUANT_METHOD = ("mono_quant (run `import mono_quant.integrations.transformers` before from_pretrained; "
                      "pip install mono-quant)")
# options of quantize() a config carries (JSON values only: include / exclude are name globs)
_OPTIONS = ("dtype", "symmetric", "granularity", "group_size", "method", "activations", "include", "exclude",
            "min_weight_numel", "embeddings", "reduce_range")


class MonoQuantConfig(QuantizationConfigMixin):
    """The options of :func:`mono_quant.quantize` as a transformers quantization config.

    Pass it to ``from_pretrained(..., quantization_config=...)`` to quantize
    while loading; ``save_pretrained`` then writes the quantized buffers and
    this config (with ``layers``) to the folder, which ``from_pretrained``
    reloads bit for bit once this module is imported (``mono_quant.MonoQuantConfig``
    imports it).  Also importable as ``mono_quant.MonoQuantConfig`` (an
    AttributeError naming the package when transformers is missing).

    Args:
        dtype: "int8" (default), "uint8", "int4", "fp16" or "bf16".
        activations: int8 only: "dynamic" (the default when None) or "weight_only".
        group_size: int4 only: columns per group (default 128 when None), 0 for one
            group per output channel.
        method: int4 rounding ("rtn", "mse", "hqq").
        include: Module-name globs to quantize (types cannot go in a JSON config).
        exclude: Module-name globs to leave in float.
        symmetric: As for quantize().
        granularity: As for quantize().
        min_weight_numel: As for quantize().
        reduce_range: As for quantize(): 7-bit activations for int8 dynamic layers
            (faster on AVX2 CPUs without VNNI; default False).
        embeddings: As for quantize(); refused for a model whose output head is
            tied to its input embeddings (transformers re-ties them on load).
        layers: Filled in when the model is quantized: the manifest entry of each
            quantized layer, from which a saved folder is rebuilt.  Leave it unset.
        **kwargs: Keys transformers itself adds to a saved config; ignored.

    Raises:
        ConfigError: An invalid option (checked as quantize() checks it), at construction.
        TypeError: ``include`` / ``exclude`` that is not a list of strings.

    Examples:
        >>> from transformers import AutoModelForCausalLM
        >>> model = AutoModelForCausalLM.from_pretrained(path, quantization_config=mq.MonoQuantConfig(dtype="int8"))
        >>> model.save_pretrained("model-int8")
        >>> again = AutoModelForCausalLM.from_pretrained("model-int8")
    """

    def __init__(self, dtype: str = "int8", *, activations: Optional[str] = None, group_size: Optional[int] = None,
                 method: Optional[str] = None, include: Optional[List[str]] = None,
                 exclude: Optional[List[str]] = None, symmetric: Optional[bool] = None,
                 granularity: Optional[str] = None, min_weight_numel: Optional[int] = None,
                 embeddings: Optional[bool] = None, reduce_range: Optional[bool] = None, layers: Optional[List[Dict[str, Any]]] = None, **kwargs):
        self.quant_method = QUANT_METHOD
        self.dtype, self.activations, self.group_size, self.method = dtype, activations, group_size, method
        self.include, self.exclude = include, exclude
        self.symmetric, self.granularity, self.min_weight_numel = symmetric, granularity, min_weight_numel
        self.embeddings, self.reduce_range = embeddings, reduce_range
        self.layers = layers
        _warn_unknown_keys(kwargs)
        if activations == "static":  # calibration runs the model on data: from_pretrained has none
            raise ConfigError("MonoQuantConfig(activations='static') is not supported: static int8 needs calibration "
                              "data; load the float model, then mono_quant.quantize(model, activations='static', "
                              "calibration=...)")
        for name in ("include", "exclude"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, list) and all(isinstance(p, str) for p in value)):
                raise TypeError(f"MonoQuantConfig({name}=...) takes a list of module-name globs, got {value!r}")
        self.quantize_options()  # validated now, not at the end of a long load

    def quantize_options(self) -> Dict[str, Any]:
        """Keyword arguments of :func:`mono_quant.quantize` (validated; raises ConfigError)."""
        from ..config import DEFAULT, QuantConfig, resolve_options

        options = {name: getattr(self, name) for name in _OPTIONS}
        # JSON has no "unset": None is the default here, as in a config file ("weight_only", 0 per channel)
        options["activations"] = DEFAULT if self.activations is None else self.activations
        options["group_size"] = DEFAULT if self.group_size is None else (self.group_size or None)
        if self.layers is not None and str(self.dtype).lower() in ("fp16", "bf16"):
            # a checkpoint saved when fp16 / bf16 took (and ignored) these: it must still load
            options["symmetric"], options["activations"] = None, DEFAULT
        resolve_options(QuantConfig(), **options)
        return {**options, "config": QuantConfig()}  # never a config file of the working directory

    def describe(self, model: nn.Module) -> None:
        """Let :meth:`to_dict` (what ``save_pretrained`` writes) list ``model``'s quantized layers as they
        are then: a layer set weight-only or ``reduce_range`` afterwards, or the model cast to bfloat16,
        was saved as it had been loaded (another function on reload, or a CheckpointError).  Held weakly,
        outside the config (which stays plain data), and only while the model's config holds this one."""
        _DESCRIBED[id(self)] = model

    def _described_model(self) -> Optional[nn.Module]:
        model = _DESCRIBED.get(id(self))
        if model is not None and getattr(getattr(model, "config", None), "quantization_config", None) is self:
            return model
        return None

    def to_dict(self) -> Dict[str, Any]:
        model = self._described_model()
        layers = quantized_layer_entries(model) if model is not None else self.layers
        return {"quant_method": SAVED_QUANT_METHOD, **{name: getattr(self, name) for name in _OPTIONS},
                "layers": layers}

    def __deepcopy__(self, memo):
        """A copy; within a deep copy of the model it describes, it describes the copy (which deepcopy
        has made by the time it reaches the config)."""
        twin = type(self).__new__(type(self))
        memo[id(self)] = twin
        twin.__dict__.update(copy.deepcopy(self.__dict__, memo))
        model = _DESCRIBED.get(id(self))
        if model is not None and id(model) in memo:
            twin.describe(memo[id(model)])
        return twin


#: id(MonoQuantConfig) -> the model it describes (weakly; the identity check above guards a reused id)
_DESCRIBED: "weakref.WeakValueDictionary[int, nn.Module]" = weakref.WeakValueDictionary()


# transformers' other quantizers' names for the layers to keep float (bitsandbytes, GPTQ, AWQ, ...)
_OTHER_QUANTIZERS_SKIP_LISTS = ("modules_to_not_convert", "llm_int8_skip_modules")


def _warn_unknown_keys(kwargs: Dict[str, Any]) -> None:
    """Warn about keys that are neither options nor what transformers adds (``quant_method``,
    private ``_*`` keys): a misspelled option would otherwise be dropped silently."""
    unknown = [k for k in kwargs if k != "quant_method" and not k.startswith("_")]
    for key in unknown:
        if key in _OTHER_QUANTIZERS_SKIP_LISTS:
            warn_at_caller(f"MonoQuantConfig: {key!r} (another quantizer's option) ignored: layers to keep float go in "
                           f"exclude=[...], module-name globs (exclude=['lm_head', '*.mlp.*'])", UserWarning)
            continue
        close = difflib.get_close_matches(key, _OPTIONS, n=1)
        warn_at_caller(f"MonoQuantConfig: unknown option {key!r} ignored"
                       + (f" (did you mean {close[0]!r}?)" if close else f" (options: {', '.join(_OPTIONS)})"),
                       UserWarning)


class MonoQuantHfQuantizer(HfQuantizer):
    """The transformers quantizer of ``quant_method="mono_quant"`` (see the module doc)."""

    requires_calibration = False

    def __init__(self, quantization_config: MonoQuantConfig, **kwargs):
        super().__init__(quantization_config, **kwargs)
        if self.pre_quantized and not quantization_config.layers:
            raise CheckpointError("the model's quantization_config (quant_method 'mono_quant') lists no quantized "
                                  "layers: it was not saved from a mono-quant model")
        if self.pre_quantized:
            check_config_layers(quantization_config.layers)

    def validate_environment(self, *args, **kwargs):
        device_map = kwargs.get("device_map")
        if isinstance(device_map, dict) and {str(d) for d in device_map.values()} - {"cpu"}:
            raise ValueError("mono-quant models load on the CPU (device_map={'': 'cpu'} or none); its kernels are CPU "
                             "kernels (a CUDA tensor runs torch's fallback)")

    def update_dtype(self, dtype):
        return torch.float32 if dtype is None else dtype

    def is_serializable(self, *args, **kwargs):
        return True

    def _dequantize(self, model, *args, **kwargs):  # model.dequantize()
        raise NotImplementedError("a mono-quant model is not dequantized in place (its float weights are gone; a "
                                  "dequantized copy would be as large as the float model): load the float checkpoint "
                                  "without quantization_config, or read a layer's float weight as layer.weight")

    @property
    def is_trainable(self):
        # adapters (PEFT LoRA) train on the quantized layers, as after quantize(): transformers'
        # Trainer asks this before training a model loaded quantized
        return True

    def _process_model_before_weight_loading(self, model, **kwargs):
        if not self.pre_quantized:
            return model
        modules = dict(model.named_modules(remove_duplicate=False))
        shells = expand_shells(modules, self.quantization_config.layers)
        # an attention's float bias_k / bias_v are checked as the layers' tensors are
        _check_files(self.quantization_config.layers, kwargs.get("checkpoint_files") or [],
                     float_parameter_keys(shells), model, self)
        for path, (_, shell) in shells.items():
            _set_module(model, path, shell)  # an LSTM / attention: its children are filled below
        for entry in self.quantization_config.layers:
            empty = _empty_quantized_module(entry)
            for name in [entry["name"]] + list(entry.get("aliases", [])):
                float_module = modules.get(name)
                if float_module is None:
                    raise CheckpointError(f"quantization_config lists layer {name!r}, which the model does not have")
                cls = type(empty)
                if type(float_module) is not cls.float_type:
                    raise CheckpointError(f"layer {name!r} is a {type(float_module).__name__} in the model, "
                                          f"the checkpoint has a quantized {cls.float_type.__name__}")
                _set_module(model, name, empty)
                _skip_parent_init(model, name)
        return model

    def param_needs_quantization(self, model, param_name: str, **kwargs) -> bool:
        """True for the saved ``weight`` of a 16-bit layer stored in another layout than its ``.weight``
        shows (``view_is_float_layout``): a QuantizedConv1d's ``[out, in, 1, k]`` (the height-1 conv it
        runs as) against ``[out, in, k]``, GPT-2's Conv1D's ``[out, in]`` against ``[in, out]``, which
        transformers' loader took for a shape mismatch (a Whisper folder saved in fp16 / bf16 did not
        reload).  transformers asks this of a pre-quantized load only to let such a tensor through;
        never when quantizing on load."""
        if not self.pre_quantized:
            return False
        path, _, local = param_name.rpartition(".")
        try:
            module = model.get_submodule(path) if path else model
        except AttributeError:
            return False
        return (local == "weight" and isinstance(module, QuantizedModule)
                and getattr(module, "view_is_float_layout", False) and "weight" in module._buffers)

    def get_state_dict_and_metadata(self, model):
        # save_pretrained, before it writes the config: the config describes this model again (a model
        # unpickled lost the link), and its to_dict lists the layers once, as they are
        self.quantization_config.describe(model)
        return None, {}

    def _process_model_after_weight_loading(self, model, **kwargs):
        self.quantization_config.describe(model)
        guard_resize_token_embeddings(model)
        if self.pre_quantized:
            _check_loaded_layers(model, self.quantization_config.layers)
            check_loaded_float_parameters(model)
            _freeze_quantized_parameters(model)
            return model
        from .. import quantize

        options = self.quantization_config.quantize_options()
        if options["embeddings"] and _has_tied_head(model):
            raise ValueError(
                f"MonoQuantConfig(embeddings=True) on {type(model).__name__}, whose output head is tied to its input "
                f"embeddings: transformers re-ties them on every load, which a quantized table can't take. Use "
                f"embeddings=False (the head stays float and tied), or mono_quant.quantize(model, embeddings=True) "
                f"with mono_quant.save / load")
        result = quantize(model, **options)
        for name, m in result.model.named_modules(remove_duplicate=False):
            if isinstance(m, (QuantizedComposite, QuantizedModule)):  # a composite's children are recorded too
                _set_module(model, name, m)
        self.quantization_config.layers = quantized_layer_entries(result.model)
        model.mono_quant_report = result.report
        return model


def _has_tied_head(model: nn.Module) -> bool:
    get_in, get_out = getattr(model, "get_input_embeddings", None), getattr(model, "get_output_embeddings", None)
    head, table = (get_out() if get_out else None), (get_in() if get_in else None)
    return head is not None and table is not None and getattr(head, "weight", None) is getattr(table, "weight", 0)


def _empty_quantized_module(entry: Dict[str, Any]) -> nn.Module:
    """A quantized module of a manifest entry, its tensors allocated (uninitialized) for
    transformers to fill.  Raises CheckpointError for an entry that doesn't describe one."""
    try:
        cls = quantized_class(entry["class"])
        tensors = {local: torch.empty(spec["shape"], dtype=dtype_from_name(spec["dtype"]))
                   for local, spec in entry["tensors"].items()}
        return cls.from_saved(entry["init_kwargs"], entry["attrs"], tensors)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"quantization_config layer {entry.get('name')!r}: cannot rebuild it: {exc}") from None


def _check_files(layers: List[Dict[str, Any]], files, float_parameters: Dict[str, torch.Tensor],
                 model: Optional[nn.Module] = None, hf_quantizer=None) -> None:
    """Every tensor the layers need is in the safetensors files, with its dtype and shape, and
    every composite's float parameter (``float_parameters``: key -> the model's parameter)
    with its shape: transformers would otherwise fill a missing one with an uninitialized tensor.

    The files' keys are compared under the names transformers gives them on ``model`` (its
    checkpoint renaming: a ViT's ``encoder.layer.0.attention.attention.query`` is the model's
    ``layers.0.attention.q_proj``, the names the layers are listed by); a quantized layer's
    tensor that transformers would merge / split / permute on load is refused."""
    from ..io.container import read_header
    from ..io.dtypes import dtype_name
    from .hf_keys import model_key_map

    files = [f for f in files if str(f).endswith(".safetensors")]
    if not files:
        return
    in_file: Dict[str, Any] = {}
    for path in files:
        in_file.update(read_header(path).tensors)
    listed = {name for entry in layers for name in [entry["name"]] + list(entry.get("aliases", []))}
    expected = {layer_key(name, local) for entry in layers
                for name in [entry["name"]] + list(entry.get("aliases", [])) for local in entry["tensors"]}
    key_map = {key: (key, None) for key in in_file}
    if model is not None:
        try:
            key_map = model_key_map(model, in_file, hf_quantizer, expected | set(float_parameters))
        except Exception as exc:  # (transformers' mapping code failing on this model): the names as stored
            warn_at_caller(f"mono-quant: cannot map the checkpoint's names to the model's ({exc}); comparing them "
                           f"as stored", UserWarning)
    _refuse_converted(key_map, listed)
    found: Dict[str, Any] = {}
    for key, spec in in_file.items():
        name = key_map[key][0]
        if name in found:  # (two tensors of the files for one of the model's: which would it load?)
            other = next(k for k in in_file if k != key and key_map[k][0] == name)
            raise CheckpointError(f"the checkpoint's {other!r} and {key!r} are both the model's {name!r}")
        found[name] = spec
    problems = []
    for entry in layers:
        for local, spec in entry.get("tensors", {}).items():
            key = layer_key(entry["name"], local)
            have = found.get(key)
            if have is None:
                problems.append(f"{key} is missing")
            elif dtype_name(have.dtype) != spec.get("dtype") or list(have.shape) != list(spec.get("shape", ())):
                problems.append(f"{key} is {dtype_name(have.dtype)}{list(have.shape)} in the file, "
                                f"{spec.get('dtype')}{spec.get('shape')} in quantization_config")
    problems += [f"{key} is in the file but no quantization_config.layers entry lists it"
                 for key in unlisted_tensors(layers, found)]
    for key, expected_param in float_parameters.items():
        have = found.get(key)
        if have is None or not have.dtype.is_floating_point or list(have.shape) != list(expected_param.shape):
            problems.append(f"{key} is missing" if have is None else f"{key} is {dtype_name(have.dtype)}"
                            f"{list(have.shape)} in the file, a float {list(expected_param.shape)} in the model")
    if problems:
        raise CheckpointError(f"the checkpoint does not match its quantization_config: {'; '.join(problems[:10])}"
                              f"{' ...' if len(problems) > 10 else ''}")


def _refuse_converted(key_map: Dict[str, Any], listed) -> None:
    """CheckpointError for the files' tensors of a quantized layer (one of ``listed``) that a
    transformers WeightConverter would take on load: a tensor op (NomicBert's ``Wqkv`` split in
    q / k / v, MoE experts merged), meant for float weights, which would cut a quantized
    layer's packed buffers apart."""
    converted: Dict[str, List[str]] = {}
    for file_key, (model_key, converter) in key_map.items():
        if converter is not None and model_key.rpartition(".")[0] in listed:
            converted.setdefault(converter, []).append(file_key)
    if converted:
        converter, keys = next(iter(converted.items()))
        more = sum(len(k) for k in converted.values()) - 1
        layer = key_map[keys[0]][0].rpartition(".")[0]
        what = f"{keys[0]!r} (quantized layer {layer!r})" + (f" and {more} more tensors go" if more else " goes")
        raise CheckpointError(
            f"the checkpoint's {what} through transformers' weight conversion {converter!r} on load (tensors "
            f"merged / split / permuted, not only renamed), "
            f"which a quantized layer's tensors can't take: save the quantized model with "
            f"mono_quant.save(model, path) and load it with mono_quant.load(path, model=skeleton), or keep "
            f"these layers float (MonoQuantConfig(exclude=[...]), mono_quant.quantize(..., exclude=[...]))")


def _check_loaded_layers(model: nn.Module, layers: List[Dict[str, Any]]) -> None:
    """Validate each loaded quantized layer as mono_quant.load validates a file's."""
    from ..packing import check_packed_module

    modules = dict(model.named_modules(remove_duplicate=False))
    for entry in layers:
        module = modules[entry["name"]]
        check_layer("model", entry, own_tensors(module), "")
        if "weight_packed" in module._buffers:
            problem = check_packed_module(module)
            if problem:
                raise CheckpointError(f"layer {entry['name']!r}: bad packed int8 weight: {problem}")


def _freeze_quantized_parameters(model: nn.Module) -> None:
    """Biases of quantized layers (and an attention's bias_k / bias_v) frozen, as quantize() and
    mono_quant.load leave them: transformers' loader makes every parameter it fills trainable."""
    for m in model.modules():
        if isinstance(m, (QuantizedModule, QuantizedComposite)):
            for p in m.parameters(recurse=False):
                p.requires_grad_(False)


def _skip_parent_init(model: nn.Module, name: str) -> None:
    """Spare the parent of a loaded quantized layer transformers' re-initialization when the
    parent holds no tensor of its own: its ``_init_weights`` can then only rewrite its
    children's weights (GPT-2 rescales ``c_proj.weight``), which are loaded, and a quantized
    child has no float ``weight`` to rewrite.  Children are still visited one by one."""
    parent_name = name.rpartition(".")[0]
    parent = model.get_submodule(parent_name) if parent_name else model
    if parent is not model and not parent._parameters and not parent._buffers:
        parent._is_hf_initialized = True


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    parent._modules[child] = module


def register() -> None:
    """Register the config and the quantizer with transformers (once), under both names."""
    for method in (QUANT_METHOD, SAVED_QUANT_METHOD):
        if AUTO_QUANTIZATION_CONFIG_MAPPING.get(method) is not MonoQuantConfig:
            AUTO_QUANTIZATION_CONFIG_MAPPING.pop(method, None)  # a reloaded module's older class
            register_quantization_config(method)(MonoQuantConfig)
        if AUTO_QUANTIZER_MAPPING.get(method) is not MonoQuantHfQuantizer:
            AUTO_QUANTIZER_MAPPING.pop(method, None)
            register_quantizer(method)(MonoQuantHfQuantizer)


register()
