"""Fold an eval-mode BatchNorm into the Conv2d / Linear before it, on copies.

    y = gamma * (W x + b - mean) / sqrt(var + eps) + beta
      = (W * k) x + ((b - mean) * k + beta),   k = gamma / sqrt(var + eps)  (per output channel)

Computed in float64 and rounded once to the weight's dtype, so the folded
layer matches conv -> bn in eval mode to float rounding.  The inputs are
never modified: the result is a new module.
"""
from __future__ import annotations

import copy
from typing import Union

import torch
from torch import nn

from .module_hooks import hook_computed_names, weight_in_use

__all__ = ["fold_batchnorm", "fold_conv_bn", "fold_linear_bn"]

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _bn_factors(bn: nn.Module, out_channels: int):
    if not isinstance(bn, _BN):
        raise TypeError(f"expected a BatchNorm module, got {type(bn).__name__}")
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("BatchNorm without running statistics (track_running_stats=False) uses batch statistics "
                         "and cannot be folded")
    if bn.num_features != out_channels:
        raise ValueError(f"BatchNorm has {bn.num_features} features but the layer before it has {out_channels} "
                         "output channels")
    var = bn.running_var.detach().double()
    mean = bn.running_mean.detach().double()
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(var)
    k = gamma / torch.sqrt(var + bn.eps)
    return k, beta - mean * k


def _folded(layer: nn.Module, bn: nn.Module, out_channels: int) -> nn.Module:
    k, shift = _bn_factors(bn, out_channels)
    computed = bool(getattr(layer, "parametrizations", None)) or bool(hook_computed_names(layer))
    # a parametrized or weight_norm / pruning-hooked layer: the weight it computes, into a plain layer
    # (deepcopy refused the hook's non-leaf weight; a parametrized copy refused the new weight)
    w = (weight_in_use(layer) if computed else layer.weight).detach()
    folded = _plain_like(layer, w) if computed else copy.deepcopy(layer)
    shape = (-1,) + (1,) * (w.dim() - 1)
    new_w = (w.double() * k.reshape(shape)).to(w.dtype)
    b = layer.bias.detach().double() if layer.bias is not None else torch.zeros_like(k)
    new_b = (b * k + shift).to(w.dtype)
    grad = layer.weight.requires_grad if not computed else w.requires_grad or any(
        p.requires_grad for p in layer.parameters())
    folded.weight = nn.Parameter(new_w, requires_grad=grad)
    folded.bias = nn.Parameter(new_b, requires_grad=grad)
    return folded


def _plain_like(layer: nn.Module, w: torch.Tensor) -> nn.Module:
    """A new plain Linear / Conv of ``layer``'s geometry (its weight and bias are set after)."""
    kw = {"device": w.device, "dtype": w.dtype}
    if isinstance(layer, nn.Linear):
        return nn.Linear(layer.in_features, layer.out_features, **kw)
    cls = next(c for c in (nn.Conv3d, nn.Conv2d, nn.Conv1d) if isinstance(layer, c))
    plain = cls(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                layer.dilation, layer.groups, True, layer.padding_mode, **kw)
    return plain.train(layer.training)


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new Conv2d (1d/3d too) equal to ``bn(conv(x))`` in eval mode; always has a bias."""
    if not isinstance(conv, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        raise TypeError(f"fold_conv_bn needs Conv1d/2d/3d (not transposed), got {type(conv).__name__}")
    return _folded(conv, bn, conv.out_channels)


def fold_linear_bn(linear: nn.Linear, bn: nn.BatchNorm1d) -> nn.Linear:
    """A new Linear equal to ``bn(linear(x))`` in eval mode (BatchNorm1d over the features)."""
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"fold_linear_bn needs nn.Linear, got {type(linear).__name__}")
    return _folded(linear, bn, linear.out_features)


def fold_batchnorm(layer: Union[nn.Conv2d, nn.Linear], bn: nn.Module) -> nn.Module:
    """Dispatch to fold_conv_bn / fold_linear_bn by the layer's type."""
    if isinstance(layer, nn.Linear):
        return fold_linear_bn(layer, bn)
    return fold_conv_bn(layer, bn)
