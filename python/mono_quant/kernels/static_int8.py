"""The static int8 kernels (csrc/static_int8.c, bound in csrc/bind_static.c), as the
static/ modules call them: int8 codes in, int8 codes (or float) out, fixed activation
scales.  Their pure-torch twins, which the tests hold them to bit for bit, are in
``mono_quant.static.reference``."""
from __future__ import annotations

from .. import _C

__all__ = ["quantize_static", "dequantize_static", "conv2d_static", "depthwise_static", "add_static",
           "avgpool_static", "static_program", "static_program_run"]

# The C entry points validate every argument themselves (types, shapes, ranges) and
# raise a Python exception naming it: no wrapper logic is needed on this side.
quantize_static = _C.quantize_static
dequantize_static = _C.dequantize_static
conv2d_static = _C.conv2d_static
depthwise_static = _C.depthwise_static
add_static = _C.add_static
avgpool_static = _C.avgpool_static
static_program = _C.static_program  # a whole program built once (csrc/static_program.h) ...
static_program_run = _C.static_program_run  # ... and run in one call
