"""Non-persistent buffers of a model loaded into a meta-device skeleton.

A file holds parameters and persistent buffers only; non-persistent buffers
(rotary ``inv_freq``, BERT's ``position_ids`` / ``token_type_ids``) come from
the model's own construction.  A skeleton built under ``torch.device("meta")``
has them on meta, so after :func:`~mono_quant.load` they are materialized from
the model's own init, or the load fails naming them: never a model that runs
on placeholder values.

- Hugging Face models: a twin of the architecture is built from ``model.config``
  on meta (no weights allocated), its non-persistent buffers moved to the CPU and
  filled by the model's own ``initialize_weights`` (what ``from_pretrained`` does).
- Any other model: build the skeleton with :func:`parameters_on_meta` (parameters
  on meta, buffers computed as usual) or on the CPU.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Dict, List, Tuple

import torch
from torch import nn

from .errors import CheckpointError

__all__ = ["materialize_non_persistent_buffers", "parameters_on_meta", "meta_non_persistent_buffers"]


def meta_non_persistent_buffers(model: nn.Module) -> List[Tuple[str, nn.Module, str]]:
    """``(full name, owner module, buffer name)`` of each non-persistent buffer on meta."""
    out = []
    for path, m in model.named_modules():
        for bname, b in m._buffers.items():
            if b is not None and bname in m._non_persistent_buffers_set and b.device.type == "meta":
                out.append((f"{path}.{bname}" if path else bname, m, bname))
    return out


def materialize_non_persistent_buffers(qmodel: nn.Module, skeleton: nn.Module, where: str = "") -> None:
    """Give each non-persistent buffer of ``qmodel`` left on meta its value from the
    architecture's own init (Hugging Face models, see the module doc), in place.
    Raises CheckpointError naming the buffers that can't be materialized."""
    pending = meta_non_persistent_buffers(qmodel)
    if not pending:
        return
    values = _hf_buffer_values(skeleton)
    unknown = [name for name, _, _ in pending if name not in values]
    if unknown:
        raise CheckpointError(
            f"{where}the model's non-persistent buffers {unknown[:8]}{' ...' if len(unknown) > 8 else ''} are on the "
            f"meta device: a file holds no non-persistent buffers, and mono-quant cannot rebuild them for "
            f"{type(skeleton).__name__}. Build the skeleton with its buffers real: "
            f"`with mono_quant.io.skeleton.parameters_on_meta(): model = {type(skeleton).__name__}(...)` "
            f"(or on the CPU)")
    for name, owner, bname in pending:
        value = values[name]
        old = owner._buffers[bname]
        if tuple(value.shape) != tuple(old.shape):
            raise CheckpointError(f"{where}non-persistent buffer {name!r}: the architecture's init gives shape "
                                  f"{list(value.shape)}, the skeleton has {list(old.shape)}")
        owner._buffers[bname] = value.to(old.dtype) if value.dtype != old.dtype else value


def _hf_buffer_values(skeleton: nn.Module) -> Dict[str, torch.Tensor]:
    """The non-persistent buffers of a Hugging Face model's architecture, computed on the
    CPU from its config without allocating its weights; {} for any other model."""
    config = getattr(skeleton, "config", None)
    if config is None or not hasattr(skeleton, "initialize_weights") or \
            not hasattr(skeleton, "named_non_persistent_buffers"):
        return {}
    with torch.device("meta"):
        twin = type(skeleton)(config)
    for path, m in twin.named_modules():
        for bname in list(m._non_persistent_buffers_set):
            b = m._buffers.get(bname)
            if b is not None:
                m._buffers[bname] = torch.empty_like(b, device="cpu")
    twin.initialize_weights()
    return {name: b for name, b in twin.named_buffers() if b.device.type == "cpu"}


@contextmanager
def parameters_on_meta():
    """Build a skeleton whose parameters are on the meta device (no memory) while its
    buffers are computed as usual, so :func:`~mono_quant.load` can fill the rest::

        with parameters_on_meta():
            skeleton = MyModel()

    (Parameters are created as usual, then moved: a constructor that initializes
    them still spends that time.)"""
    original = nn.Module.register_parameter

    def register(module, name, param):
        original(module, name, param)
        p = module._parameters.get(name)
        if p is not None and p.device.type != "meta":
            module._parameters[name] = type(p)(p.to("meta"), requires_grad=p.requires_grad)

    nn.Module.register_parameter = register
    try:
        yield
    finally:
        nn.Module.register_parameter = original
