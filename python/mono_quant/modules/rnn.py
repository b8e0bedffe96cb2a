"""QuantizedLSTM, QuantizedGRU and QuantizedRNN: replace nn.LSTM / nn.GRU (as torch.ao's
dynamic quantized LSTM / GRU did) and nn.RNN (tanh or relu cells).

Each layer and direction keeps its input projection ``ih_l{k}[_reverse]`` (weight
``[G*H, input]``, bias ``b_ih``) and its hidden projection ``hh_l{k}[_reverse]`` (``[G*H, H]``,
bias ``b_hh``) as QuantizedLinear children (``proj_size``: also ``hr_l{k}[_reverse]``, no
bias); the gates and the recurrence run in torch.  The input projection of a whole
sequence is one matmul (``T*B`` rows: where int8 pays); the hidden projection runs once
per step on ``B`` rows.  A PackedSequence runs padded, each sequence's state held past its end;
``forward(padded, hx, lengths=...)`` does the same on a padded batch (what torch.compile(fullgraph=True)
and torch.export can capture: a PackedSequence's layout is in its batch_sizes *values*).

The time loop is a Python loop, which torch.compile / torch.export unroll for the example's
sequence length (a guard refuses another length).  When the length is symbolic (torch.export
with a dynamic dimension, a compile with dynamic shapes) the loop is torch's ``scan`` instead:
one graph for every length.
"""
from __future__ import annotations

import re
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

from ..dynamo_hooks import when_dynamo_imported
from ..torch_features import is_exporting
from .composite import ChildSpec, QuantizedComposite
from .input_checks import check_float_input
from .registry import register_qmodule

__all__ = ["QuantizedLSTM", "QuantizedGRU", "QuantizedRNN"]

try:  # torch's scan (a prototype higher-order op; torch 2.13 has it)
    from torch._higher_order_ops import scan as _scan
except ImportError:  # older torch: a symbolic length is specialized by the Python loop, as before
    _scan = None


#: nn.LSTM / nn.GRU / nn.RNN's parameter names: weight_ih_l0, bias_hh_l1_reverse, weight_hr_l0 (proj_size)
_FLOAT_NAME = re.compile(r"(weight|bias)_(ih|hh|hr)_(l\d+(?:_reverse)?)")


class _QuantizedRNNBase(QuantizedComposite):
    """What QuantizedLSTM, QuantizedGRU and QuantizedRNN share: configuration, children, shapes, layers.

    The float module's ``weight_ih_l0`` / ``bias_hh_l0`` / ``weight_hr_l0``... read as its
    children's: ``ih_l0.weight`` (the read-only dequantized view a QuantizedLinear gives, same
    shape as the float parameter) and ``ih_l0.bias`` (the float bias); assigning them is refused."""

    gates = 1
    has_cell = False

    def __getattr__(self, name: str):
        # (only after the normal lookup failed: children, parameters and attributes cost nothing more)
        if name.startswith(("weight_", "bias_")):
            child, kind = self._float_name(name)
            if child is not None:
                value = getattr(child, kind)
                if value is not None:  # (bias=False: no bias_* attribute, as on the float module)
                    return value
        return super().__getattr__(name)

    def __setattr__(self, name: str, value) -> None:
        if name.startswith(("weight_", "bias_")) and self._float_name(name)[0] is not None:
            part = _FLOAT_NAME.fullmatch(name)
            raise AttributeError(
                f"{type(self).__name__}.{name} is read-only: it reads the {part[2]}_{part[3]} child's "
                f"{part[1]} ({type(self._modules[f'{part[2]}_{part[3]}']).__name__}).  Change the float "
                f"{self.float_type.__name__} and quantize it again")
        super().__setattr__(name, value)

    def _float_name(self, name: str):
        """(child, "weight" or "bias") that the float module's parameter ``name`` reads, or (None, None)."""
        found = _FLOAT_NAME.fullmatch(name)
        child = self.__dict__.get("_modules", {}).get(f"{found[2]}_{found[3]}") if found else None
        return (child, found[1]) if child is not None else (None, None)

    def flatten_parameters(self) -> None:
        """Does nothing, as on a float module off cuDNN: model code calls it before every forward
        (speech models, CRNNs), and the quantized weights are the children's, never one flat buffer."""

    @property
    def _flat_weights_names(self) -> List[str]:
        """The float module's parameter names, in its order (``weight_ih_l0``, ``weight_hh_l0``,
        ``bias_ih_l0``, ``bias_hh_l0``, ``weight_hr_l0``, then the next direction and layer)."""
        names = []
        for layer in range(self.num_layers):
            for suffix in ("", "_reverse")[: 2 if self.bidirectional else 1]:
                tail = f"l{layer}{suffix}"
                names += [f"weight_ih_{tail}", f"weight_hh_{tail}"]
                names += [f"bias_ih_{tail}", f"bias_hh_{tail}"] if self.bias else []
                names += [f"weight_hr_{tail}"] if self.proj_size > 0 else []
        return names

    @property
    def all_weights(self) -> List[List[torch.Tensor]]:
        """As the float module's: per layer and direction, its weights (read-only dequantized views)
        and biases."""
        per = len(self._flat_weights_names) // (self.num_layers * (2 if self.bidirectional else 1))
        flat = [getattr(self, name) for name in self._flat_weights_names]
        return [flat[i:i + per] for i in range(0, len(flat), per)]

    def _configure(self, module: nn.RNNBase) -> None:
        self.input_size = module.input_size
        self.hidden_size = module.hidden_size
        self.num_layers = module.num_layers
        self.bias = module.bias
        self.batch_first = module.batch_first
        self.dropout = float(module.dropout)
        self.bidirectional = module.bidirectional
        self.proj_size = getattr(module, "proj_size", 0)

    @classmethod
    def child_specs(cls, module: nn.RNNBase) -> List[ChildSpec]:
        specs = []
        for layer in range(module.num_layers):
            for suffix in ("", "_reverse")[: 2 if module.bidirectional else 1]:
                tail = f"l{layer}{suffix}"
                for part in ("ih", "hh"):
                    bias = getattr(module, f"bias_{part}_{tail}") if module.bias else None
                    specs.append((f"{part}_{tail}", getattr(module, f"weight_{part}_{tail}"), bias))
                if getattr(module, "proj_size", 0) > 0:
                    specs.append((f"hr_{tail}", getattr(module, f"weight_hr_{tail}"), None))
        return specs

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def output_size(self) -> int:
        return self.proj_size if self.proj_size > 0 else self.hidden_size

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}"
        if self.proj_size:
            s += f", proj_size={self.proj_size}"
        for flag in ("batch_first", "bidirectional"):
            if getattr(self, flag):
                s += f", {flag}=True"
        if not self.bias:
            s += ", bias=False"
        if self.dropout:
            s += f", dropout={self.dropout}"
        return s

    # -- forward -------------------------------------------------------------------------------------
    def _inputs(self, x, hx):
        """``(x as [T, B, in], initial states as tuple of [L*D, B, size], batched)``; raises as nn.LSTM does."""
        check_float_input(x, type(self).__name__)
        if x.dim() not in (2, 3):
            raise ValueError(f"{type(self).__name__}: Expected input to be 2D or 3D, got {x.dim()}D instead")
        batched = x.dim() == 3
        if x.shape[-1] != self.input_size:
            raise RuntimeError(f"input.size(-1) must be equal to input_size. Expected {self.input_size}, "
                               f"got {x.shape[-1]}")
        if not batched:
            x = x.unsqueeze(1)
        elif self.batch_first:
            x = x.transpose(0, 1)
        batch = x.shape[1]
        sizes = [self.output_size, self.hidden_size] if self.has_cell else [self.hidden_size]
        states = self._initial_states(hx, batch, batched, sizes, x)
        return x, states, batched

    def _initial_states(self, hx, batch: int, batched: bool, sizes, x) -> Tuple[torch.Tensor, ...]:
        count = self.num_layers * self.num_directions
        if hx is None:
            return tuple(torch.zeros(count, batch, s, dtype=x.dtype, device=x.device) for s in sizes)
        given = tuple(hx) if self.has_cell else (hx,)
        if self.has_cell and len(given) != 2:
            raise RuntimeError(f"{type(self).__name__}: hx must be a tuple (h_0, c_0)")
        out = []
        for state, size in zip(given, sizes):
            if not isinstance(state, torch.Tensor):
                raise TypeError(f"{type(self).__name__}: initial states must be tensors, got {type(state).__name__}")
            if state.dim() != (3 if batched else 2):
                raise RuntimeError(f"For {'batched 3-D' if batched else 'unbatched 2-D'} input, hx should also be "
                                   f"{3 if batched else 2}-D but got {state.dim()}-D tensor")
            state = state if batched else state.unsqueeze(1)
            if tuple(state.shape) != (count, batch, size):
                raise RuntimeError(f"Expected hidden size {(count, batch, size)}, got {list(state.shape)}")
            out.append(state.to(x.dtype))
        return tuple(out)

    def forward(self, x, hx=None, *, lengths: Optional[torch.Tensor] = None):
        """As the float module's forward.  ``lengths`` (keyword, mono-quant only): the length of each
        sequence of a padded batched ``x``, as a PackedSequence would carry them: each state is held
        past its sequence's end and outputs there are zero (what ``pad_packed_sequence`` of the packed
        output gives); unlike a PackedSequence, torch.compile(fullgraph=True) and torch.export capture it."""
        if not torch.compiler.is_compiling() and torch._C._is_tracing():  # (dynamo can't call _is_tracing)
            # the time loop runs in Python: a trace would replay the example's step count
            # for every later input (silently wrong outputs for other sequence lengths)
            raise RuntimeError(f"{type(self).__name__} cannot be traced with torch.jit.trace: its recurrence is a "
                               f"Python loop the trace would freeze at the example's sequence length. Use "
                               f"torch.export.export, torch.compile or mono_quant.export_onnx instead")
        packed = None
        if isinstance(x, PackedSequence):
            if lengths is not None:
                raise ValueError(f"{type(self).__name__}: lengths= is for a padded input; a PackedSequence carries "
                                 f"its own")
            # torch.export would fail inside pad_packed_sequence, obscurely
            if is_exporting():
                raise RuntimeError(f"{type(self).__name__}: torch.export cannot capture a PackedSequence input "
                                   f"(its layout is in batch_sizes values). Export with the padded batch and its "
                                   f"lengths instead: rnn(padded, hx, lengths=lengths)")
            # padded (batch in the caller's order, as hx and the returned states are); each step
            # updates only the sequences still running, so padding never enters a state
            packed, (x, lengths) = x, _unpack(x)
            check_float_input(x, type(self).__name__)
            x = x.transpose(0, 1) if self.batch_first else x
        x, states, batched = self._inputs(x, hx)
        padded_lengths = packed is None and lengths is not None
        if padded_lengths:
            lengths = self._check_lengths(lengths, x, batched)
        finals: List[List[torch.Tensor]] = [[] for _ in states]
        layer_input = x
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(self.num_directions):
                index = layer * self.num_directions + direction
                tail = f"l{layer}{'_reverse' if direction else ''}"
                out, last = self._run_direction(layer_input, tail, tuple(s[index] for s in states), bool(direction),
                                                lengths)
                outputs.append(out)
                for kept, state in zip(finals, last):
                    kept.append(state)
            layer_input = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)
            if self.dropout and self.training and layer < self.num_layers - 1:
                layer_input = F.dropout(layer_input, p=self.dropout, training=True)
        output = layer_input
        finals = [torch.stack(f) for f in finals]
        if padded_lengths:  # zero past each end, as pad_packed_sequence pads a packed output
            running = torch.arange(output.shape[0], device=output.device).unsqueeze(1) < lengths.unsqueeze(0)
            output = output * running.unsqueeze(2).to(output.dtype)
        if packed is not None:
            output = _repack(output, packed)
        elif not batched:
            output, finals = output.squeeze(1), [f.squeeze(1) for f in finals]
        elif self.batch_first:
            output = output.transpose(0, 1)
        return output, (tuple(finals) if self.has_cell else finals[0])

    def _check_lengths(self, lengths, x: torch.Tensor, batched: bool) -> torch.Tensor:
        """``lengths`` as a ``[B]`` int64 tensor on ``x``'s device; raises on what can't be lengths."""
        name = type(self).__name__
        if not batched:
            raise ValueError(f"{name}: lengths= needs a batched 3-D input (one length per sequence)")
        if not isinstance(lengths, torch.Tensor):
            raise TypeError(f"{name}: lengths must be a tensor, got {type(lengths).__name__}")
        if lengths.dim() != 1 or lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool \
                or lengths.shape[0] != x.shape[1]:
            raise ValueError(f"{name}: lengths must be a 1-D integer tensor of one length per sequence "
                             f"({x.shape[1]}), got {lengths.dtype} of shape {tuple(lengths.shape)}")
        if not torch.compiler.is_compiling() and bool(((lengths < 0) | (lengths > x.shape[0])).any()):
            raise ValueError(f"{name}: lengths must be between 0 and the padded length {x.shape[0]}, got "
                             f"{lengths.tolist()}")
        return lengths.to(device=x.device, dtype=torch.int64)

    def _run_direction(self, x: torch.Tensor, tail: str, state, reverse: bool, lengths=None):
        """One layer in one direction over the whole sequence ``x`` ``[T, B, in]``:
        ``(outputs [T, B, out], final states)``.  ``lengths`` (a PackedSequence's): a sequence
        keeps its state past its end, so the reverse direction starts at its own last step."""
        steps, batch = x.shape[0], x.shape[1]
        # the input projection of every step at once: one matmul of T*B rows
        projection = getattr(self, f"ih_{tail}")  # (its width, not -1: an empty batch has no size to infer)
        projected = projection(x.reshape(steps * batch, x.shape[2])).reshape(steps, batch, projection.out_features)
        hidden = getattr(self, f"hh_{tail}")
        project = getattr(self, f"hr_{tail}") if self.proj_size else None
        if isinstance(steps, torch.SymInt) and _scan is not None:  # a symbolic length: scan, one graph for all
            return self._scan_direction(projected, hidden, project, state, reverse, lengths)
        outputs: List[Optional[torch.Tensor]] = [None] * steps
        order = range(steps - 1, -1, -1) if reverse else range(steps)
        for t in order:
            running = None if lengths is None else (lengths > t).unsqueeze(1)
            state = self._step(hidden, project, projected[t], state, running)
            outputs[t] = state[0]
        out = torch.stack(outputs) if steps else x.new_zeros(0, batch, self.output_size)
        return out, state

    def _scan_direction(self, projected: torch.Tensor, hidden, project, state, reverse: bool, lengths):
        """:meth:`_run_direction`'s loop as torch's ``scan`` over ``projected`` ``[T, B, G*H]``."""
        steps = projected.shape[0]
        if lengths is None:
            running = projected.new_ones(steps, projected.shape[1], 1, dtype=torch.bool)
        else:
            running = (torch.arange(steps, device=projected.device).unsqueeze(1) < lengths.unsqueeze(0)).unsqueeze(2)

        def step(carry, inputs):
            new = self._step(hidden, project, inputs[0], carry, inputs[1])
            return new, new[0].clone()  # (scan allows no output aliasing the carry)

        # the carry and inputs as tensors of their own: a view's base (a state slice of [layers * directions,
        # B, H], a direction's half of the projection) gave scan's tracer its sizes too, and where the batch
        # equalled another of them (2 directions) the export pinned the batch ("specialized to 2")
        state = tuple(t.clone() if t._base is not None else t for t in state)
        projected = projected.clone() if projected._base is not None else projected
        final, out = _scan(step, state, (projected, running), reverse=reverse)
        return out, final

    def _step(self, hidden, project, gi: torch.Tensor, state, running: Optional[torch.Tensor]):
        """One time step of one layer and direction, for the Python loop and for ``scan``: the new
        states from the step's input projection ``gi`` ``[B, G*H]``, the hidden projection
        ``hidden`` (and ``proj_size``'s ``project``, or None) and ``state``; where ``running``
        (``[B, 1]`` bool, None: every sequence) is False a sequence keeps its state."""
        new = self._cell(gi, hidden(state[0]), state)
        if project is not None:
            new = (project(new[0]),) + tuple(new[1:])
        if running is not None:
            new = tuple(torch.where(running, n, old) for n, old in zip(new, state))
        return new


_PACKED_REASON = ("mono-quant: a PackedSequence input to a quantized LSTM / GRU / RNN is unpacked outside the graph "
                  "(its layout is in batch_sizes values, which dynamo cannot trace, as it cannot trace torch's "
                  "pad_packed_sequence). Under torch.compile(fullgraph=True) or torch.export pass the padded batch "
                  "and its lengths instead: rnn(padded, hx, lengths=lengths)")


def _outside_graphs(fn):
    """``fn`` never traced by dynamo (under fullgraph=True: an error giving _PACKED_REASON)."""
    try:
        return torch.compiler.disable(fn, reason=_PACKED_REASON)
    except TypeError:  # torch before reason=
        return torch.compiler.disable(fn)


def _unpack(packed: PackedSequence) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(padded [T, B, ...] in the caller's batch order, lengths on its device)``."""
    padded, lengths = pad_packed_sequence(packed)
    return padded, lengths.to(padded.device)


def _repack(padded: torch.Tensor, like: PackedSequence) -> PackedSequence:
    """``padded`` ``[T, B, ...]`` (batch in the caller's order) packed as ``like`` is."""
    if like.sorted_indices is not None:
        padded = padded.index_select(1, like.sorted_indices.to(padded.device))
    sizes = like.batch_sizes.tolist()
    data = torch.cat([padded[t, :size] for t, size in enumerate(sizes)]) if sizes else padded.reshape(0, *padded.shape[2:])
    return PackedSequence(data, like.batch_sizes, like.sorted_indices, like.unsorted_indices)


def _keep_out_of_graphs() -> None:
    global _unpack, _repack
    _unpack, _repack = _outside_graphs(_unpack), _outside_graphs(_repack)


# (torch.compiler.disable imports torch._dynamo, ~1 s: done when something else imports it)
when_dynamo_imported(_keep_out_of_graphs)


@register_qmodule(nn.LSTM)
class QuantizedLSTM(_QuantizedRNNBase):
    """nn.LSTM with quantized input / hidden (/ projection) weights: same arguments,
    outputs and states ``(output, (h_n, c_n))`` as nn.LSTM, PackedSequence inputs included."""

    gates = 4
    has_cell = True

    @staticmethod
    def _cell(gi: torch.Tensor, gh: torch.Tensor, state):
        c = state[1]
        i, f, g, o = (gi + gh).chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c


@register_qmodule(nn.GRU)
class QuantizedGRU(_QuantizedRNNBase):
    """nn.GRU with quantized input / hidden weights: same arguments, outputs and
    state ``(output, h_n)`` as nn.GRU, PackedSequence inputs included."""

    gates = 3

    @staticmethod
    def _cell(gi: torch.Tensor, gh: torch.Tensor, state):
        h = state[0]
        i_r, i_z, i_n = gi.chunk(3, dim=1)
        h_r, h_z, h_n = gh.chunk(3, dim=1)
        r = torch.sigmoid(i_r + h_r)
        z = torch.sigmoid(i_z + h_z)
        n = torch.tanh(i_n + r * h_n)
        return ((1 - z) * n + z * h,)


@register_qmodule(nn.RNN)
class QuantizedRNN(_QuantizedRNNBase):
    """nn.RNN (``nonlinearity`` "tanh" or "relu") with quantized input / hidden weights:
    same arguments, outputs and state ``(output, h_n)`` as nn.RNN, PackedSequence inputs included."""

    def _configure(self, module: nn.RNN) -> None:
        super()._configure(module)
        if module.nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"QuantizedRNN: unknown nonlinearity {module.nonlinearity!r} (nn.RNN takes 'tanh' or "
                             f"'relu')")
        self.nonlinearity = module.nonlinearity

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s if self.nonlinearity == "tanh" else s + ", nonlinearity='relu'"

    def _cell(self, gi: torch.Tensor, gh: torch.Tensor, state):
        pre = gi + gh
        return (torch.relu(pre) if self.nonlinearity == "relu" else torch.tanh(pre),)
