"""StaticInt8Model: a static int8 model whose chain of fused int8 ops runs in one C call.

Run node by node from Python, every op of a small CNN pays a few microseconds of
interpreter and tensor overhead (most of the time at batch 1), and every
intermediate activation of a batch makes a round trip through memory.  When the
whole program is int8 from the quantized input to one float output (ResNet-style
chains of convs, residual adds, broadcasting adds, channel concatenations, global
pool, linear head), it is compiled once,
on the first call, into a compact node array (``_C.static_program``,
csrc/static_program.h) that runs every op on one image at a time with the same
kernels, so outputs are bit-identical to the node-by-node path.

Anything else takes the node-by-node path of StaticGraphModel: a program with
float ops, several inputs or outputs, grouped (non-depthwise) convs, convs padded on
the codes (a padding mode other than zeros, an uneven 'same'), hooks on a
layer, keyword arguments, non-CPU or unexpected input shapes.
``model.run_as_program = False`` forces it (benchmarks, debugging).
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Union

import numpy as np
import torch

from ..kernels import static_int8 as static_kernels
from ..kernels.settings import SETTINGS
from .capture import ValueRef
from ..torch_features import is_exporting
from .eager_only import refuse_traced_input, warn_if_grad_input
from .graph import StaticGraphModel, _global_hooks
from .modules import StaticAdd, StaticConv2d, StaticGlobalAvgPool, StaticLinear, inverse
from .modules_eltwise import StaticBroadcastAdd, StaticCat

__all__ = ["StaticInt8Model", "compile_program"]

_QUANTIZE, _CONV, _DEPTHWISE, _ADD, _POOL, _CAT, _BCAST_ADD = range(7)
_NO_ARRAYS = ()
_NO_GEOMETRY = (0,) * 10


def _node(kind: int, ins: List[int], out: int, geometry=_NO_GEOMETRY, zps=(0, 0, 0), out_float=False,
          has_m128=False, epilogue=(0.0, 0.0, 1.0), scales=(1.0, 1.0, 1.0), arrays=_NO_ARRAYS) -> tuple:
    in0 = ins[0] if ins else -1
    in1 = ins[1] if len(ins) > 1 else -1
    ints = tuple(int(v) for v in geometry) + (zps[0], zps[1], zps[2], int(out_float), int(has_m128))
    return (kind, in0, in1, out, ints, tuple(float(v) for v in epilogue + scales), arrays)


def _epilogue(layer) -> tuple:
    return tuple(layer._epilogue_args())


def _broadcast_add_node(layer: StaticBroadcastAdd, ins, slots, ranks, out: int, last: bool):
    """(node, rank) of a broadcasting add (two activations, or one and the layer's constant codes,
    per-image shape (h, w, c) in the node's (kh, kw, n)), or (None, 0)."""
    if any(i not in slots for i in ins):
        return None, 0
    rank = ranks[ins[0]]
    zps, scales = (layer.in_zp, layer.out_zp, layer.b_zp), (layer.in_scale, layer.b_scale, 1.0)
    if layer.b_codes is None:
        if len(ins) != 2 or ranks[ins[1]] != rank:
            return None, 0
        return _node(_BCAST_ADD, [slots[i] for i in ins], out, zps=zps, out_float=last, epilogue=_epilogue(layer),
                     scales=scales), rank
    shape = layer.const_shape
    if len(ins) != 1 or len(shape) != rank or shape[0] != 1 or tuple(layer.b_codes.shape) != tuple(shape):
        return None, 0  # a constant that broadcasts over the batch too runs op by op
    h, w, c = shape[1:] if rank == 4 else (1, 1, shape[1])
    codes = layer.b_codes.contiguous().numpy()
    return _node(_BCAST_ADD, [slots[ins[0]]], out, (0, c, h, w, 0, 0, 0, 0, 0, 0), zps, last,
                 epilogue=_epilogue(layer), scales=scales, arrays=(codes,)), rank


def _cat_node(layer: StaticCat, ins, slots, ranks, out: int):
    """(node, rank) of an int8 concatenation along the channels (NHWC's last dimension, a [rows,
    features] activation's features), or (None, 0).  The C node copies each input, or requantizes
    it with StaticCat's arithmetic where its qparams are not the output's."""
    if layer.out_scale is None or not ins or any(i not in slots for i in ins):
        return None, 0
    rank = ranks[ins[0]]
    if any(ranks[i] != rank for i in ins) or layer.rank != rank or len(ins) != len(layer.in_scales):
        return None, 0
    if not ((rank == 4 and layer.channels_last and layer.dim == 3) or
            (rank == 2 and not layer.channels_last and layer.dim == 1)):
        return None, 0
    arrays = (np.array([slots[i] for i in ins], dtype=np.int32), np.array(layer.in_scales, dtype=np.float32),
              np.array(layer.in_zps, dtype=np.int32))
    return _node(_CAT, [slots[ins[0]]], out, (0, len(ins)) + (0,) * 8, (0, layer.out_zp, 0),
                 epilogue=(0.0, 0.0, inverse(layer.out_scale)), scales=(layer.out_scale, 1.0, 1.0),
                 arrays=arrays), rank


def compile_program(model: StaticGraphModel) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
    """The model's program as one C call (x -> output), or None when it is not a chain of int8
    ops from one quantized input to one float output (see the module docstring)."""
    program, layers = model.program, model.layers
    if len(program) < 3 or program[0][1] != "input" or program[-1][1] != "output":
        return None
    input_name = program[0][0]
    out_ref = program[-1][3]
    body = program[1:-1]
    if not isinstance(out_ref, ValueRef) or not body or out_ref.name != body[-1][0]:
        return None
    if any(kind != "module" for _, kind, _, _ in body) or any(entry[1] == "input" for entry in body):
        return None
    slots: Dict[str, int] = {}
    ranks: Dict[str, int] = {}
    nodes: List[tuple] = []
    quantized_input = None  # (in_scale, in_zp) of the input's quantization, shared by its consumers
    first = layers[body[0][0]]
    input_rank = 4 if isinstance(first, StaticConv2d) else 2 if isinstance(first, StaticLinear) else 0
    if not input_rank:
        return None
    for index, (name, _, ins, _) in enumerate(body):
        layer = layers[name]
        last = index == len(body) - 1
        if (layer.out_scale is None) != last:
            return None  # intermediate values must stay int8; only the model output is float
        if type(layer) in (StaticConv2d, StaticLinear):
            if len(ins) != 1:
                return None
            if ins[0] == input_name:
                if layer.int8_input:
                    return None
                key = (layer.in_scale, layer.in_zp)
                if quantized_input is None:
                    quantized_input = key
                    channels = layer.in_channels if isinstance(layer, StaticConv2d) else layer.in_features
                    slots[input_name], ranks[input_name] = len(nodes), input_rank
                    nodes.append(_node(_QUANTIZE, [], len(nodes), (channels,) + (0,) * 9, (0, layer.in_zp, 0),
                                       epilogue=(0.0, 0.0, inverse(layer.in_scale))))
                elif key != quantized_input:
                    return None
            elif not layer.int8_input or ins[0] not in slots:
                return None
            rank = ranks[ins[0]]
            if isinstance(layer, StaticConv2d):
                if rank != 4 or layer.pads is not None:  # (padding on the codes: node by node)
                    return None
                depthwise = "weight_dw" in layer._buffers
                if layer.groups != 1 and not depthwise:
                    return None
                geometry = (layer.in_channels, layer.out_channels, *layer.kernel_size, *layer.stride,
                            *layer.padding, *layer.dilation)
                out_rank = 4
            else:
                if rank != 2:
                    return None
                geometry = (layer.in_features, layer.out_features, 1, 1, 1, 1, 0, 0, 1, 1)
                depthwise, out_rank = False, 2
            if depthwise:
                w, _, xw, bias = layer._arrays()
                arrays, has_m128, kind = (w, None, xw, bias), False, _DEPTHWISE
            else:
                packed, colsum, xw, _, bias, has_m128 = layer._arrays()
                arrays, kind = (packed, colsum, xw, bias), _CONV
            node = _node(kind, [slots[ins[0]]], len(nodes), geometry, (layer.in_zp, layer.out_zp, 0), last,
                         has_m128, _epilogue(layer), arrays=arrays)
        elif type(layer) is StaticAdd:
            if len(ins) != 2 or any(i not in slots for i in ins) or ranks[ins[0]] != ranks[ins[1]]:
                return None
            out_rank = ranks[ins[0]]
            node = _node(_ADD, [slots[i] for i in ins], len(nodes), zps=(layer.in_zp, layer.out_zp, layer.b_zp),
                         out_float=last, epilogue=_epilogue(layer), scales=(layer.in_scale, layer.b_scale, 1.0))
        elif type(layer) is StaticBroadcastAdd:
            node, out_rank = _broadcast_add_node(layer, ins, slots, ranks, len(nodes), last)
            if node is None:
                return None
        elif type(layer) is StaticCat:
            node, out_rank = _cat_node(layer, ins, slots, ranks, len(nodes))
            if node is None:
                return None
        elif type(layer) is StaticGlobalAvgPool:
            if len(ins) != 1 or ins[0] not in slots or ranks[ins[0]] != 4:
                return None
            out_rank = 2 if layer.flatten else 4
            node = _node(_POOL, [slots[ins[0]]], len(nodes), zps=(layer.in_zp, layer.out_zp, 0), out_float=last,
                         epilogue=_epilogue(layer), scales=(1.0, 1.0, layer.in_scale))
        else:
            return None
        slots[name], ranks[name] = len(nodes), out_rank
        nodes.append(node)
    handle = static_kernels.static_program(nodes)
    out_rank = ranks[body[-1][0]]

    first_name = body[0][0]

    def run(x: torch.Tensor) -> torch.Tensor:
        problem = first.input_problem(x)  # (the C call's own check says only that the counts differ)
        if problem:
            raise ValueError(f"static int8 layer {first_name!r}: {problem}")
        # (NCHW, contiguous as the op-by-op path's output: the C call transposes the last node's NHWC)
        out = torch.from_numpy(static_kernels.static_program_run(handle, x.numpy(), SETTINGS.num_threads(),
                                                                 nchw=True))
        return out.view(out.shape[0], out.shape[1]) if out_rank == 2 else out

    run.input_rank = input_rank  # type: ignore[attr-defined]
    run.handle = handle  # type: ignore[attr-defined]  # (tests run it with other thread splits)
    return run


class StaticInt8Model(StaticGraphModel):
    """StaticGraphModel that runs its program in one C call where it can (module docstring);
    outputs are bit-identical either way."""

    def __init__(self, program: List[tuple], layers: Dict[str, torch.nn.Module]):
        super().__init__(program, layers)
        self.run_as_program = True
        self._compiled: Union[None, bool, Callable] = None  # None: not tried yet; False: can't
        self._compiled_for: Optional[tuple] = None  # the layers it was compiled from (_fast)

    def _apply(self, fn, *args, **kwargs):
        self._compiled = None  # the layers' buffers may be new tensors: rebuild on the next call
        return super()._apply(fn, *args, **kwargs)

    def __getstate__(self):
        # the program points into the layers' buffers: a copy compiles its own, and this model too
        # (torch.multiprocessing's pickling moves the buffers into shared memory: see
        # modules._WeightedStatic.__getstate__)
        self._compiled = None
        return self.__dict__.copy()

    def _fast(self, args, kwargs) -> Optional[Callable]:
        if not self.run_as_program or kwargs or len(args) != 1:
            return None
        compiled = self._compiled
        # rebuilt when a layer was replaced (the program holds copies of the layers' scales
        # and views of their arrays, as each layer holds its own derived arguments)
        signature = tuple(map(id, self.layers.values()))
        if compiled is None or getattr(self, "_compiled_for", None) != signature \
                or (compiled and compiled.owner != id(self)):  # (a copy compiles its own)
            compiled = self._compiled = compile_program(self) or False
            self._compiled_for = signature
            if compiled:
                compiled.owner = id(self)
        if not compiled:
            return None
        x = args[0]
        if not isinstance(x, torch.Tensor) or x.device.type != "cpu" or x.dim() != compiled.input_rank \
                or not x.dtype.is_floating_point or _global_hooks() \
                or any(m._forward_hooks or m._forward_pre_hooks for m in self.layers.values()):
            return None
        return compiled

    def _forward_eager(self, *args, **kwargs):
        """The eager forward (StaticGraphModel.forward calls it, so does the compiled op)."""
        if is_exporting() or torch.jit.is_tracing():  # (plain tensors: refuse before the fast path)
            refuse_traced_input(args)
        run = self._fast(args, kwargs)
        if run is None or type(args[0]) is not torch.Tensor:  # (a traced input: refused by the graph's forward)
            return super()._forward_eager(*args, **kwargs)  # (which warns of an input that requires grad)
        warn_if_grad_input(args)
        x = args[0].detach()
        if x.dtype != torch.float32:
            x = x.float()
        return run(x.contiguous())
