"""LoRA adapters (Hugging Face PEFT) on mono-quant's quantized Linear, Conv2d, Conv1d and
Embedding layers.

    from mono_quant.integrations.peft import get_peft_model, lora_config
    qmodel, _ = mq.quantize(model, dtype="int4")
    peft_model = get_peft_model(qmodel, lora_config(r=8, target_modules=["q_proj", "v_proj"]))
    ...train...                                    # only the adapters train; the quantized base is frozen
    peft_model.save_pretrained("adapter")          # the adapter only, loadable on the float model too
    again = from_pretrained(qmodel2, "adapter")    # the adapter back onto a quantized base

PEFT only wraps the layer types it knows (``nn.Linear``, GPT-2 ``Conv1D``, ...):
on a quantized model ``peft.get_peft_model`` raises "Target module
QuantizedLinear(...) is not supported".  Its documented hook for other layer
types is ``LoraConfig._register_custom_module`` (PEFT's "custom models" guide;
PEFT marks it experimental); :func:`register` puts :class:`QuantizedLoraLinear`
there for :class:`~mono_quant.modules.QuantizedLinear` and its subclasses
(GPT-2's :class:`~mono_quant.modules.QuantizedGPT2Conv1D`, int8 dynamic /
weight-only, int4, fp16, bf16 alike), and :class:`QuantizedLoraConv2d`,
:class:`QuantizedLoraConv1d`, :class:`QuantizedLoraEmbedding` for
:class:`~mono_quant.modules.QuantizedConv2d`, :class:`~mono_quant.modules.QuantizedConv1d`
and :class:`~mono_quant.modules.QuantizedEmbedding` (PEFT's own LoRA Conv2d / Conv1d /
Embedding, adapters as PEFT builds them for the float layer, so a saved adapter also loads
on the float model).  The registration lives on the config
object and is not saved with it, so loading an adapter onto a quantized model
goes through :func:`from_pretrained` (or ``PeftModel.from_pretrained(...,
config=register(config))``).

The LoRA layer computes ``base(x) + B(A(dropout(x))) * scaling`` with the
quantized layer as ``base``: a fresh adapter (B is zero) gives the quantized
model's outputs exactly, and gradients reach A and B through the quantized
layers' backward (``grad_x = grad_y @ W``, weights frozen).  Merging is
refused with :class:`LoraMergeError`: adding a low-rank update to a quantized
weight means requantizing it, which would round most of the update away (and
could never be unmerged).  Merge on the float model instead:
``PeftModel.from_pretrained(float_model, "adapter").merge_and_unload()``, then
``mq.quantize`` it again.  LoRA variants (DoRA, ...) and PEFT's other adapter
types (IA3, LoHa, ...) are not supported on quantized layers.

Importing this module imports ``peft`` (``pip install peft``); ``mono_quant``
itself never does.
"""
from __future__ import annotations

import sys
from typing import Any, Optional

import peft
from peft import LoraConfig, PeftConfig, PeftModel
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils.constants import SEQ_CLS_HEAD_NAMES
from peft.tuners.lora.layer import Conv1d as _PeftLoraConv1d
from peft.tuners.lora.layer import Conv2d as _PeftLoraConv2d
from peft.tuners.lora.layer import Embedding as _PeftLoraEmbedding
from peft.tuners.lora.layer import Linear as _PeftLoraLinear
from torch import nn
from torch.nn import functional as F

from ..errors import MonoQuantError
from ..modules.conv import QuantizedConv2d
from ..modules.conv1d import QuantizedConv1d
from ..modules.embedding import QuantizedEmbedding
from ..modules.linear import QuantizedLinear
from ..modules.registry import QuantizedModule
from .bound_guard import BoundGuard

__all__ = ["QuantizedLoraLinear", "QuantizedLoraConv2d", "QuantizedLoraConv1d", "QuantizedLoraEmbedding",
           "LoraMergeError", "register", "lora_config", "get_peft_model", "from_pretrained"]


class LoraMergeError(MonoQuantError, NotImplementedError):
    """``merge()`` / ``merge_and_unload()`` asked of a LoRA adapter on a quantized layer.
    What to do: keep the adapter unmerged, or merge on the float model and quantize again."""


class _QuantizedBase:
    """What the LoRA layers over quantized layers share: vanilla LoRA only, no merging."""

    @property
    def lora_variants(self):
        return {(): None}

    def resolve_lora_variant(self, *, config: LoraConfig, **kwargs):
        try:
            return super().resolve_lora_variant(config=config, **kwargs)
        except ValueError as exc:
            raise ValueError(f"mono-quant: only vanilla LoRA runs on quantized layers ({exc}); "
                             "turn the variant off (use_dora=False, ...) or apply it to the float model") from exc

    def merge(self, safe_merge: bool = False, adapter_names: Optional[list] = None) -> None:
        raise LoraMergeError(
            f"mono-quant: cannot merge a LoRA adapter into a quantized layer ({self.get_base_layer()!r}): "
            "requantizing the merged weight would round most of the adapter's update away. Keep the adapter "
            "unmerged (the model runs base + adapter), or merge on the float model: "
            "PeftModel.from_pretrained(float_model, adapter_dir).merge_and_unload(), then mono_quant.quantize() it.")


class QuantizedLoraLinear(_QuantizedBase, _PeftLoraLinear):
    """PEFT's LoRA ``Linear`` over a :class:`~mono_quant.modules.QuantizedLinear`
    (or a subclass): the forward, adapters, scaling, dropout, ``lora_bias``,
    saving and loading are PEFT's own; this class gives PEFT the layer's
    sizes, keeps to vanilla LoRA and refuses to merge (see the module docstring).
    Built by PEFT once :func:`register` put it in a ``LoraConfig``.
    """

    def __init__(self, base_layer, adapter_name: str, config: LoraConfig, **kwargs: Any) -> None:
        super().__init__(base_layer, adapter_name, config=config, **kwargs)
        # the adapters run on the Linear the layer computes ([out, in], GPT-2 Conv1D included: its .weight
        # shows the float [in, out], but merging, which would transpose, is refused), so no transpose
        self.fan_in_fan_out = False

    def _get_in_out_features(self, module):
        return module.in_features, module.out_features


class _QuantizedLoraConv(_QuantizedBase):
    """PEFT's LoRA conv over a quantized conv.  PEFT builds ``lora_A`` / ``lora_B`` as
    ``type(base_layer)(...)`` with the base's geometry: over a quantized conv that would
    build quantized convs, so while it builds them :meth:`get_base_layer` answers a float
    conv of the same geometry (on ``meta``, with an empty weight of the quantized layer's
    dtype and device, so the adapters land where the layer is)."""

    float_type = nn.Conv2d

    def _get_in_out_features(self, module):
        return module.in_channels, module.out_channels

    def update_layer(self, adapter_name: str, r: int, lora_alpha: int, config: LoraConfig, **kwargs: Any) -> None:
        base = self.get_base_layer()
        self._kernel_dim = 3 if self.float_type is nn.Conv1d else 4  # the float weight's dim (Conv1d: 3)
        stand_in = self.float_type(base.in_channels, base.out_channels, base.kernel_size, base.stride, base.padding,
                                   base.dilation, base.groups, bias=base.bias is not None, device="meta")
        stand_in.weight = nn.Parameter(base.weight.new_empty(0), requires_grad=False)
        self.__dict__["_geometry_stand_in"] = stand_in  # not a submodule
        try:
            super().update_layer(adapter_name, r, lora_alpha, config=config, **kwargs)
        finally:
            del self.__dict__["_geometry_stand_in"]

    def get_base_layer(self) -> nn.Module:
        stand_in = self.__dict__.get("_geometry_stand_in")
        return stand_in if stand_in is not None else super().get_base_layer()


class QuantizedLoraConv2d(_QuantizedLoraConv, _PeftLoraConv2d):
    """PEFT's LoRA ``Conv2d`` over a :class:`~mono_quant.modules.QuantizedConv2d`:
    ``base(x) + lora_B(lora_A(dropout(x))) * scaling`` with ``lora_A`` a float conv of the
    base's kernel, stride and padding and ``lora_B`` a 1x1 conv, as PEFT has it for
    nn.Conv2d.  Vanilla LoRA only; merging raises :class:`LoraMergeError`."""


class QuantizedLoraConv1d(_QuantizedLoraConv, _PeftLoraConv1d):
    """PEFT's LoRA ``Conv1d`` over a :class:`~mono_quant.modules.QuantizedConv1d` (as
    :class:`QuantizedLoraConv2d`, with nn.Conv1d adapters)."""

    float_type = nn.Conv1d


class QuantizedLoraEmbedding(_QuantizedBase, _PeftLoraEmbedding):
    """PEFT's LoRA ``Embedding`` over a :class:`~mono_quant.modules.QuantizedEmbedding`:
    ``base(ids) + (A^T[ids] @ B^T) * scaling`` with PEFT's ``lora_embedding_A`` /
    ``lora_embedding_B``.  Vanilla LoRA only; merging raises :class:`LoraMergeError`."""

    def _get_in_out_features(self, module):
        return module.num_embeddings, module.embedding_dim

    def _embed(self, input, weight, input_fn=None, output_fn=None):
        # PEFT's reads nn.Embedding's max_norm / sparse / ..., which a quantized table (exact
        # nn.Embedding defaults) does not carry
        if input_fn is not None:
            input = input_fn((input,))
        output = F.embedding(input, weight, padding_idx=self.get_base_layer().padding_idx)
        return output_fn(output) if output_fn is not None else output


#: quantized layer type -> its LoRA layer; a subclass before its base (PEFT takes the first isinstance match)
_LORA_LAYERS = {QuantizedConv1d: QuantizedLoraConv1d, QuantizedConv2d: QuantizedLoraConv2d,
                QuantizedEmbedding: QuantizedLoraEmbedding, QuantizedLinear: QuantizedLoraLinear}


def register(config: LoraConfig) -> LoraConfig:
    """Registers the LoRA layers for quantized Linear / Conv2d / Conv1d / Embedding layers in
    ``config`` (PEFT's ``_register_custom_module``) and returns the config.
    Idempotent; layers that are not quantized keep PEFT's own LoRA layers."""
    if not isinstance(config, LoraConfig):
        raise TypeError(f"mono-quant: only LoRA adapters run on quantized layers; got a {type(config).__name__}. "
                        "Use peft.LoraConfig, or apply this adapter type to the float model.")
    config._register_custom_module(dict(_LORA_LAYERS))
    return config


def lora_config(**kwargs: Any) -> LoraConfig:
    """``peft.LoraConfig(**kwargs)`` with the quantized layers registered."""
    return register(LoraConfig(**kwargs))


def _expand_all_linear(model: nn.Module, config: LoraConfig) -> None:
    """``target_modules="all-linear"`` as PEFT expands it (the full names of every Linear / GPT-2
    Conv1D, less the output layer, a sequence classifier's head and what sits inside an adapter),
    quantized Linear layers included: PEFT's own expansion takes ``nn.Linear`` instances only, so
    it left every quantized layer without an adapter, silently (or found no target at all).  Full
    names, as PEFT's: a head under a parent (BertForMaskedLM's ``cls.predictions.decoder``) took an
    adapter when its last name part stood for every layer of that name."""
    target = config.target_modules
    if not (isinstance(target, str) and target.lower() == "all-linear"):
        return
    modules = list(model.named_modules())
    if not any(isinstance(m, QuantizedLinear) for _, m in modules):
        return  # PEFT's own expansion
    names = {n for n, m in modules
             if n and (isinstance(m, (nn.Linear, QuantizedLinear)) or type(m).__name__ == "Conv1D"
                       or (isinstance(m, BaseTunerLayer) and "Linear" in type(m).__name__))}  # (adapted already)
    pretrained = sys.modules.get("transformers")
    heads = [None]
    if pretrained is not None and isinstance(model, pretrained.PreTrainedModel):  # (PEFT's rules are for these)
        heads = [model.get_output_embeddings()]
        if heads[0] is None and str(getattr(config, "task_type", "")).endswith("SEQ_CLS"):
            heads = [next((getattr(model, n) for n in SEQ_CLS_HEAD_NAMES if getattr(model, n, None) is not None),
                          None)]
    names -= {n for n, m in modules if any(m is h for h in heads if h is not None)}  # as PEFT: not the head
    for prefix, m in modules:  # nor a layer inside an adapter (lora_A, lora_B)
        if isinstance(m, BaseTunerLayer):
            names -= {f"{prefix}.{suffix}" for suffix, _ in m.named_modules() if suffix}
    config.target_modules = names


def _refuse_quantized_modules_to_save(model: nn.Module, config: LoraConfig) -> None:
    """PEFT trains a ``modules_to_save`` layer as a full copy: a quantized layer's copy holds
    int8 / int4 codes, so nothing of it trained and the adapter file held the codes, silently."""
    for key in config.modules_to_save or ():
        for name, m in model.named_modules():
            if (name == key or name.endswith("." + key)) and isinstance(m, QuantizedModule):
                raise ValueError(f"modules_to_save={list(config.modules_to_save)!r}: {name!r} is quantized "
                                 f"({type(m).__name__}): its codes cannot be trained as a full copy; quantize "
                                 f"with exclude=[{name!r}] to keep it float (then modules_to_save trains it), or "
                                 f"put a LoRA adapter on it (target_modules)")


def _merge_allowed(tuner) -> None:
    """The tuner's ``_check_merge_allowed``, which PEFT calls before it merges any layer: refused here
    while a quantized layer carries a LoRA adapter, so nothing is merged (or unloaded) first."""
    quantized = [name for name, m in tuner.model.named_modules() if isinstance(m, _QuantizedBase)]
    if quantized:
        shown = ", ".join(repr(n) for n in quantized[:3]) + (" ..." if len(quantized) > 3 else "")
        raise LoraMergeError(
            f"mono-quant: cannot merge LoRA adapters into quantized layers ({len(quantized)}: {shown}); nothing was "
            f"merged: requantizing a merged weight would round most of the adapter's update away. Keep the adapters "
            f"unmerged (the model runs base + adapter), or merge on the float model: "
            f"PeftModel.from_pretrained(float_model, adapter_dir).merge_and_unload(), then mono_quant.quantize() it.")
    type(tuner)._check_merge_allowed(tuner)


def _add_adapter(peft_model, adapter_name: str, peft_config, *args: Any, **kwargs: Any):
    """``PeftModel.add_adapter`` (``load_adapter`` calls it too) with the config registered and
    ``"all-linear"`` expanded as :func:`get_peft_model` does: a second adapter's plain config
    reached only the layers adapted already (PEFT's "all-linear" skips quantized Linear layers) or
    failed with "not supported" on a quantized layer not adapted yet."""
    if isinstance(peft_config, LoraConfig):
        peft_config = register(peft_config)
        _expand_all_linear(peft_model.get_base_model(), peft_config)
        _refuse_quantized_modules_to_save(peft_model.get_base_model(), peft_config)
    return type(peft_model).add_adapter(peft_model, adapter_name, peft_config, *args, **kwargs)


def _guard(peft_model):
    """A PeftModel of :func:`get_peft_model` / :func:`from_pretrained`, given its own (instance
    attributes holding it weakly, bound_guard.py; a copy's call the copy) ``add_adapter`` (:func:`_add_adapter`), and its tuner's
    ``_check_merge_allowed`` (:func:`_merge_allowed`): PEFT merges layer by layer, so the float layers'
    adapters before a quantized one were merged (by ``merge_and_unload``, unloaded too) when it refused."""
    if isinstance(peft_model, PeftModel):
        peft_model.__dict__["add_adapter"] = BoundGuard(_add_adapter, peft_model)
    tuner = getattr(peft_model, "base_model", None)
    if isinstance(tuner, nn.Module) and callable(getattr(type(tuner), "_check_merge_allowed", None)):
        tuner.__dict__["_check_merge_allowed"] = BoundGuard(_merge_allowed, tuner)
    return peft_model


def get_peft_model(model, config: LoraConfig, **kwargs: Any):
    """``peft.get_peft_model(model, config, **kwargs)`` after :func:`register` (config), with
    ``target_modules="all-linear"`` taking quantized Linear layers too.  Raises ValueError
    where ``modules_to_save`` names a quantized layer (a full copy of it can't train).  The returned
    model's ``add_adapter`` / ``load_adapter`` do the same for a further adapter, and merging its
    adapters raises LoraMergeError before any layer is merged while a quantized layer has one."""
    config = register(config)
    _expand_all_linear(model, config)
    _refuse_quantized_modules_to_save(model, config)
    return _guard(peft.get_peft_model(model, config, **kwargs))


def from_pretrained(model, model_id, config: Optional[LoraConfig] = None, **kwargs: Any) -> PeftModel:
    """``peft.PeftModel.from_pretrained(model, model_id, **kwargs)`` on a quantized
    ``model``: the adapter's saved config (or ``config``) gets the quantized
    layers registered first, which a config read from disk does not carry."""
    if config is None:
        config = PeftConfig.from_pretrained(model_id, **{k: kwargs[k] for k in ("subfolder", "revision")
                                                         if k in kwargs})
    return _guard(PeftModel.from_pretrained(model, model_id, config=register(config), **kwargs))
