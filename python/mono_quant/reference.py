"""The pure-torch twins of the C kernels, under their historical name: see
:mod:`mono_quant.kernels.reference` (where they live, beside the wrappers they mirror)."""
from .kernels.reference import (choose_qparams, conv2d_int8, dequantize_rows, linear_int8, pack_int8, packed_check,
                                q4_dequantize, q4_linear, quantize_pack_int8, quantize_rows, quantize_rows_fused,
                                rows_minmax, rows_sqerr)

__all__ = ["rows_minmax", "choose_qparams", "quantize_rows", "quantize_rows_fused", "rows_sqerr", "dequantize_rows",
           "linear_int8", "conv2d_int8", "pack_int8", "quantize_pack_int8", "packed_check", "q4_dequantize",
           "q4_linear"]
