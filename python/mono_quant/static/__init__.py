"""Static (calibrated) int8: int8 activations with fixed scales, BatchNorm folded,
ReLU fused, int8 between layers (issue 12; docs/static.md).

    qmodel, skipped = mq.quantize(model, "int8", activations="static", calibration=loader,
                                  observer="entropy", calibration_samples=512)
"""
from .capture import FusionPlan, PlanOp, TraceError, build_plan
from .conv1d import StaticConv1d
from .eager_only import StaticNoGradWarning
from .graph import StaticGraphModel, float_graph
from .modules import StaticAdd, StaticConv2d, StaticGlobalAvgPool, StaticLinear
from .modules_eltwise import StaticBroadcastAdd, StaticCat
from .persist import load_static, save_static
from .persist_per_layer import load_per_layer, save_per_layer
from .quantize import MAX_CLIPPED, MIN_SQNR_DB, quantize_static
from .report import StaticLayerReport, StaticReport

__all__ = ["quantize_static", "StaticGraphModel", "StaticConv2d", "StaticConv1d", "StaticLinear", "StaticAdd",
           "StaticGlobalAvgPool", "StaticCat", "StaticBroadcastAdd", "StaticReport", "StaticLayerReport", "FusionPlan",
           "PlanOp", "TraceError", "build_plan", "float_graph", "MAX_CLIPPED", "MIN_SQNR_DB", "save_static",
           "load_static", "save_per_layer", "load_per_layer", "StaticNoGradWarning"]
