"""A static int8 layer's calibrated constants in its state_dict.

The activation scales and zero-points (and the fused activation, the layer's sizes) are
constructor arguments, not tensors: without this, ``load_state_dict`` copied the weights
and kept the target's own activation scales, so a model calibrated on other data answered
with wrong numbers and "All keys matched".  The layer's ``init_kwargs()`` travel as JSON
bytes in a uint8 ``_extra_state`` tensor (a state_dict of tensors only, as safetensors
needs); a load whose constants differ from the target's is refused naming them (the
kernels' derived arguments and a compiled program hold them: ``mq.save`` / ``mq.load``
move a static model whole).
"""
from __future__ import annotations

import json

import torch

from ..io.untrusted_json import UntrustedJSONError, loads_bounded

__all__ = ["QParamsInStateDict", "EXTRA_STATE", "check_before_load", "check_whole_load"]

#: the key torch gives get_extra_state()'s value under each layer's prefix
EXTRA_STATE = "_extra_state"


def _encoded(kwargs: dict) -> bytes:
    return json.dumps(kwargs, sort_keys=True, allow_nan=False).encode()


def check_before_load(root: torch.nn.Module, state_dict, prefix: str = "") -> None:
    """Every static layer's constants checked before ``root`` copies any tensor (a refused load
    leaves the model as it was)."""
    for name, m in root.named_modules():
        key = prefix + (f"{name}.{EXTRA_STATE}" if name else EXTRA_STATE)
        if isinstance(m, QParamsInStateDict) and key in state_dict:
            try:
                m.set_extra_state(state_dict[key])
            except ValueError as exc:
                raise ValueError(f"layer {name!r}: {exc}") from None


def _check_whole_load(module, state_dict, prefix, *_):
    check_before_load(module, state_dict, prefix)


def check_whole_load(root: torch.nn.Module) -> None:
    """Have ``root.load_state_dict`` check every static layer below it first: the per-layer model's root
    is the user's class, whose load would otherwise copy the layers before a refused one."""
    # torch runs a module's load pre-hooks before it copies its own tensors or its children's; the
    # hook gets the module (with_module), so a deep copy checks the copy
    root._register_load_state_dict_pre_hook(_check_whole_load, with_module=True)


class QParamsInStateDict:
    """Mixin for the static layers (they define ``init_kwargs()``)."""

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if prefix + EXTRA_STATE in state_dict:  # checked before torch copies this layer's tensors
            self.set_extra_state(state_dict[prefix + EXTRA_STATE])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def get_extra_state(self) -> torch.Tensor:
        return torch.frombuffer(bytearray(_encoded(self.init_kwargs())), dtype=torch.uint8)

    def set_extra_state(self, state) -> None:
        name = type(self).__name__
        if not isinstance(state, torch.Tensor) or state.dtype != torch.uint8 or state.dim() != 1 \
                or state.device.type != "cpu":
            raise ValueError(f"{name}: its state_dict's {EXTRA_STATE} must be the uint8 CPU bytes state_dict() wrote")
        try:
            theirs = loads_bounded(state.numpy().tobytes())
        except UntrustedJSONError as exc:
            theirs = exc
        if not isinstance(theirs, dict):
            raise ValueError(f"{name}: its state_dict's {EXTRA_STATE} is not the JSON state_dict() wrote")
        ours = json.loads(_encoded(self.init_kwargs()))
        diff = [f"{k}: {theirs.get(k)!r} in the state_dict, {ours.get(k)!r} here"
                for k in sorted(set(theirs) | set(ours)) if theirs.get(k) != ours.get(k)]
        if diff:
            raise ValueError(f"{name}: the state_dict was calibrated otherwise ({'; '.join(diff[:4])}): a static "
                             f"int8 state_dict loads only into a model with the same calibration; move a static "
                             f"model with mq.save / mq.load")
