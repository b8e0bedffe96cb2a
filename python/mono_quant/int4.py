"""INT4 group-wise weights under their historical module name: the format lives in
:mod:`mono_quant.formats.int4_weight` (the weight type, quantization, the linear op)
and :mod:`mono_quant.formats.int4` (the format object)."""
from .formats.int4_weight import (BLAS_MAX_OUT_FEATURES, BLAS_MIN_ROWS, DEFAULT_INT4_GROUP_SIZE,
                                  DEFAULT_INT4_METHOD, INT4_METHODS, Int4Weight, check_group_size, check_method,
                                  effective_group, int4_linear, quantize_int4, quantize_int4_rows,
                                  set_int8_activations, unpack_int4)

__all__ = ["Int4Weight", "quantize_int4", "quantize_int4_rows", "int4_linear", "unpack_int4", "INT4_METHODS",
           "DEFAULT_INT4_METHOD", "DEFAULT_INT4_GROUP_SIZE", "effective_group", "set_int8_activations",
           "check_group_size", "check_method", "BLAS_MIN_ROWS", "BLAS_MAX_OUT_FEATURES"]
