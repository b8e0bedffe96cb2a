"""Static int8 concatenation and broadcasting adds (issue 12, part 2).

``StaticCat``: ``torch.cat`` of int8 activations.  Calibration gives the
concatenation one output scale and the conversion hands it to the producers
(convert.py: a producer that feeds one concatenation outputs at its scale),
so most inputs are copied as they are; an input at another scale or
zero-point (a producer shared by two concatenations) is requantized with the
static epilogue's arithmetic, in fp32 without FMA:
``v = (q - zp_in) * s_in``, ``q' = clamp(round_half_even(v * (1/s_out)) + zp_out, -127, 127)``
(``requantize_codes``; elementwise torch ops, so every ISA gives the same bits).

``StaticBroadcastAdd``: a residual add whose operands broadcast (``(N,C,1,1) +
(N,C,H,W)``, or an activation plus a constant such as a per-channel bias,
quantized once at conversion to symmetric int8 codes kept in the
activations' channels-last layout).  The operands are expanded (an int8 copy)
and added by StaticAdd's kernel: the same arithmetic and bits as a plain
add of the expanded tensors.

Both also run inside the one-call program (program.py, csrc/static_program.c: node kinds
MQ_SP_CAT and MQ_SP_BCAST_ADD) with the same arithmetic, bit for bit.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from torch import nn

from .modules import StaticAdd, check_flag, check_int, check_scale, check_zp, f32, inverse, nchw_output
from .qparams_state import QParamsInStateDict

__all__ = ["StaticCat", "StaticBroadcastAdd", "requantize_codes", "dequantize_codes", "nhwc_dim",
           "quantize_constant"]


def nhwc_dim(dim: int, rank: int) -> int:
    """The dimension of a channels-last int8 activation that is ``dim`` of the float tensor it stands
    for (rank 4: NCHW -> NHWC; rank 2: unchanged)."""
    if rank not in (2, 4) or not -rank <= dim < rank:
        raise ValueError(f"dim {dim} of a rank-{rank} activation (static int8 runs rank 2 and 4)")
    d = dim % rank
    return (0, 3, 1, 2)[d] if rank == 4 else d


def dequantize_codes(q: torch.Tensor, scale: float, zp: int) -> torch.Tensor:
    """(q - zp) * scale in fp32."""
    return (q.to(torch.float32) - float(zp)) * torch.tensor(f32(scale), dtype=torch.float32)


def requantize_codes(q: torch.Tensor, in_scale: float, in_zp: int, out_scale: float, out_zp: int) -> torch.Tensor:
    """int8 codes at (in_scale, in_zp) -> int8 codes at (out_scale, out_zp), the epilogue's rounding."""
    s = dequantize_codes(q, in_scale, in_zp) * torch.tensor(inverse(out_scale), dtype=torch.float32)
    s = s.clamp(-127.0 - out_zp, 127.0 - out_zp)
    return (torch.round(s).to(torch.int32) + out_zp).to(torch.int8)


class StaticCat(QParamsInStateDict, nn.Module):
    """``torch.cat`` of int8 activations of rank ``rank`` along ``dim`` of the int8 layout
    (``channels_last``: NHWC codes of NCHW tensors, as convolutions pass them; else the float
    layout, as linear layers pass them), each input with its own (scale, zero-point); int8
    output at (out_scale, out_zp), or float (``out_scale=None``: each input dequantized, NCHW
    again when channels-last)."""

    def __init__(self, in_scales: Sequence[float], in_zps: Sequence[int], out_scale: Optional[float] = None,
                 out_zp: int = 0, dim: int = 3, rank: int = 4, channels_last: bool = True):
        super().__init__()
        if len(in_scales) != len(in_zps) or not in_scales:
            raise ValueError(f"StaticCat needs one scale and one zero-point per input, got {len(in_scales)} "
                             f"and {len(in_zps)}")
        channels_last = check_flag("channels_last", channels_last)
        rank = check_int("StaticCat rank", rank, 1, 8)
        dim = check_int("StaticCat dim", dim, 0, rank - 1)
        if channels_last and rank != 4:
            raise ValueError(f"StaticCat: channels-last codes are rank 4, got rank {rank}")
        self.in_scales: List[float] = [check_scale(f"in_scales[{i}]", s) for i, s in enumerate(in_scales)]
        self.in_zps: List[int] = [check_zp(f"in_zps[{i}]", z) for i, z in enumerate(in_zps)]
        self.out_scale = None if out_scale is None else check_scale("out_scale", out_scale)
        self.out_zp = check_zp("out_zp", out_zp)
        self.dim, self.rank, self.channels_last = dim, rank, channels_last

    def init_kwargs(self):
        return {"in_scales": list(self.in_scales), "in_zps": list(self.in_zps), "out_scale": self.out_scale,
                "out_zp": self.out_zp, "dim": self.dim, "rank": self.rank, "channels_last": self.channels_last}

    def requantized_inputs(self) -> List[int]:
        """Positions of the inputs whose codes are rewritten (their qparams differ from the output's)."""
        if self.out_scale is None:
            return list(range(len(self.in_scales)))
        return [i for i, (s, z) in enumerate(zip(self.in_scales, self.in_zps))
                if (s, z) != (self.out_scale, self.out_zp)]

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        if len(xs) != len(self.in_scales):
            raise ValueError(f"StaticCat: {len(xs)} inputs, built for {len(self.in_scales)}")
        for i, x in enumerate(xs):
            if x.dtype != torch.int8 or x.dim() != self.rank:
                raise ValueError(f"StaticCat: input {i} is {x.dtype} of rank {x.dim()}, expected int8 codes of "
                                 f"rank {self.rank}")
        parts = []
        for x, s, z in zip(xs, self.in_scales, self.in_zps):
            if self.out_scale is None:
                parts.append(dequantize_codes(x, s, z))
            elif (s, z) == (self.out_scale, self.out_zp):
                parts.append(x)
            else:
                parts.append(requantize_codes(x, s, z, self.out_scale, self.out_zp))
        out = torch.cat(parts, self.dim)
        if self.out_scale is None and self.channels_last:
            return nchw_output(out)
        return out

    def extra_repr(self) -> str:
        out = "float" if self.out_scale is None else f"int8 scale {self.out_scale:.4g} zp {self.out_zp}"
        layout = "channels-last" if self.channels_last else "as float"
        return (f"{len(self.in_scales)} inputs, dim={self.dim} ({layout}), requantized {self.requantized_inputs()}, "
                f"out={out}")


def quantize_constant(const: torch.Tensor, rank: int):
    """(int8 codes in the channels-last layout of a rank-``rank`` activation, scale) of a float
    constant added to one: symmetric, scale max|c| / 127 (1.0 for all zeros)."""
    c = torch.as_tensor(const).detach().to(torch.float32)
    if not bool(torch.isfinite(c).all()):
        raise ValueError("the constant added to an activation holds NaN or Inf")
    if c.dim() > rank:
        raise ValueError(f"a constant of shape {tuple(c.shape)} added to a rank-{rank} activation")
    c = c.reshape((1,) * (rank - c.dim()) + tuple(c.shape))
    if rank == 4:
        c = c.permute(0, 2, 3, 1)
    top = float(c.abs().max()) if c.numel() else 0.0
    scale = f32(top / 127.0) if top > 0 else 1.0
    if not scale > 0:  # a denormal max|c|
        scale = 1.0
    codes = torch.round(c * torch.tensor(inverse(scale), dtype=torch.float32)).clamp(-127, 127).to(torch.int8)
    return codes.contiguous(), scale


class StaticBroadcastAdd(StaticAdd):
    """act(a + b) of int8 activations whose shapes broadcast, or of an int8 activation ``a`` and a
    constant ``b`` held as int8 codes (``b_codes``, channels-last, scale ``b_scale``, zero-point 0)."""

    def __init__(self, act=None, in_scale=1.0, b_scale=1.0, out_scale=None, in_zp=0, b_zp=0, out_zp=0,
                 const_shape: Optional[Sequence[int]] = None):
        super().__init__(act, in_scale, b_scale, out_scale, in_zp, b_zp, out_zp)
        if const_shape is not None and (not isinstance(const_shape, (list, tuple)) or len(const_shape) not in (2, 4)):
            raise ValueError(f"const_shape must be 2 or 4 positive sizes, got {const_shape!r}")
        self.const_shape = None if const_shape is None else [
            check_int(f"const_shape[{i}]", v) for i, v in enumerate(const_shape)]
        if self.const_shape is not None:
            if self.b_zp != 0:
                raise ValueError("a constant operand is symmetric: b_zp must be 0")
            self.register_buffer("b_codes", torch.zeros(self.const_shape, dtype=torch.int8))
        else:
            self.register_buffer("b_codes", None)

    @classmethod
    def with_constant(cls, const: torch.Tensor, rank: int, act, in_scale, out_scale, in_zp=0, out_zp=0):
        codes, scale = quantize_constant(const, rank)
        m = cls(act, in_scale, scale, out_scale, in_zp, 0, out_zp, const_shape=list(codes.shape))
        m.b_codes.copy_(codes)
        return m

    def init_kwargs(self):
        return dict(super().init_kwargs(), const_shape=self.const_shape)

    def forward(self, a: torch.Tensor, b: Optional[torch.Tensor] = None) -> torch.Tensor:
        if (b is None) != (self.b_codes is not None):
            raise ValueError("StaticBroadcastAdd: pass b exactly when the layer holds no constant")
        if b is None:
            b = self.b_codes
        try:
            a, b = torch.broadcast_tensors(a, b)
        except RuntimeError:
            raise ValueError(f"StaticBroadcastAdd: int8 operands of shapes {tuple(a.shape)} and {tuple(b.shape)} do "
                             "not broadcast") from None
        return super().forward(a.contiguous(), b.contiguous())

    def extra_repr(self) -> str:
        what = f"constant {self.const_shape}" if self.const_shape is not None else "broadcast"
        return f"{what}, {super().extra_repr()}"
