"""Drop-in replacements for torch.nn.LSTM, GRU and RNN on the fused kernels.

`RNNBase` derives from `torch.nn.RNNBase`, so parameter creation, names
(`weight_ih_l{k}{_reverse}` ...), shapes, initialisation, constructor checks, `extra_repr`,
pickling and `load_state_dict` are torch.nn's own: a state dict moves between the two in both
directions unchanged. It is deliberately not a subclass of torch.nn.LSTM/GRU/RNN, which
torch.compile refuses to trace ("Attempted to wrap RNN, GRU, or LSTM").

The forward reproduces torch.nn's argument handling and error messages, then runs
`functional.rnn`, whose per-layer time loop is one fused op.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence

from . import _lengths, functional
from ._ops import rnn_layer

__all__ = ["RNNBase", "LSTM", "GRU", "RNN", "RNNCellBase", "LSTMCell", "GRUCell", "RNNCell"]

# Names torch.nn's forward uses in its "Expected input to be 2D or 3D" message.
_DIM_ERROR = {
    "LSTM": "LSTM: Expected input to be 2D or 3D, got {}D instead",
    "GRU": "GRU: Expected input to be 2D or 3D, got {}D instead",
    "RNN_TANH": "RNN: Expected input to be 2D or 3D, got {}D tensor instead",
    "RNN_RELU": "RNN: Expected input to be 2D or 3D, got {}D tensor instead",
}


class RNNBase(torch.nn.RNNBase):
    """Shared forward of the fused LSTM, GRU and RNN (see the module docstring)."""

    def _current_weights(self):
        """The weights to run with: the module's own Parameters, looked up directly (torch.nn's
        `_update_flat_weights` costs ~8 us of getattr per call, a tenth of a small model's step);
        torch.nn's path where one is not a plain Parameter (a parametrization, or
        torch.func.functional_call's substitutes)."""
        params = self._parameters
        weights = [params.get(name) for name in self._flat_weights_names]
        if any(w is None for w in weights):  # (not `None in`: that compares tensors with ==)
            self._update_flat_weights()
            return self._flat_weights
        return weights

    def flatten_parameters(self) -> None:
        """No-op: the fused kernels read each parameter where it is (torch.nn packs them into
        one buffer for cuDNN)."""

    def _zeros_state(self, input: Tensor, batch: int):
        directions = 2 if self.bidirectional else 1
        state = self.proj_size if self.proj_size > 0 else self.hidden_size
        h = torch.zeros(self.num_layers * directions, batch, state, dtype=input.dtype,
                        device=input.device)
        if self.mode != "LSTM":
            return h
        c = torch.zeros(self.num_layers * directions, batch, self.hidden_size,
                        dtype=input.dtype, device=input.device)
        return h, c

    def _check_hx_dims(self, hx, batched: bool) -> None:
        """torch.nn's checks that hx has as many dimensions as the (batched) input."""
        want = 3 if batched else 2
        kind = "batched 3-D" if batched else "unbatched 2-D"
        if self.mode == "LSTM":
            if hx[0].dim() != want or hx[1].dim() != want:
                raise RuntimeError(
                    f"For {kind} input, hx and cx should also be {want}-D but got "
                    f"({hx[0].dim()}-D, {hx[1].dim()}-D) tensors")
        elif hx.dim() != want:
            raise RuntimeError(
                f"For {kind} input, hx should also be {want}-D but got {hx.dim()}-D tensor")

    def forward(self, input, hx=None, *, lengths=None, cell_states=False):
        """torch.nn's forward, plus two keywords (the defaults give torch.nn's behaviour):

        lengths: on padded input, a 1-D list or tensor of sequence lengths, giving the results
            of packing the input with them (outputs past a sequence's length are 0, h_n/c_n are
            taken at each sequence's own last step).
        cell_states: LSTM only. Also return the last layer's cell state c_t at every step, shaped
            like the output with hidden_size features per direction (a PackedSequence for packed
            input): `output, (h_n, c_n), c_all = lstm(x, cell_states=True)`. Gradients flow
            through it like through the output.
        """
        if cell_states and self.mode != "LSTM":
            raise ValueError("cell_states=True is only for LSTM: GRU and RNN have no cell state")
        if lengths is not None:
            return self._forward_lengths(input, hx, lengths, cell_states)
        weights = self._current_weights()
        lstm = self.mode == "LSTM"
        packed = isinstance(input, PackedSequence)
        given = hx is not None
        if packed:
            input, batch_sizes, sorted_indices, unsorted_indices = input
            if not given:
                hx = self._zeros_state(input, int(batch_sizes[0]))
            else:
                hx = self.permute_hidden(hx, sorted_indices)
            batched = True
        else:
            batch_sizes = sorted_indices = unsorted_indices = None
            if input.dim() not in (2, 3):
                raise ValueError(_DIM_ERROR[self.mode].format(input.dim()))
            batched = input.dim() == 3
            batch_dim = 0 if self.batch_first else 1
            if not batched:
                input = input.unsqueeze(batch_dim)
            if not given:
                hx = self._zeros_state(input, input.size(batch_dim))
            else:
                self._check_hx_dims(hx, batched)
                if not batched:
                    hx = (hx[0].unsqueeze(1), hx[1].unsqueeze(1)) if lstm else hx.unsqueeze(1)
        if given:
            self.check_forward_args(input, hx, batch_sizes)
        else:  # the zero states were made to measure: only the input's checks apply
            self.check_input(input, batch_sizes)

        h0, c0 = hx if lstm else (hx, None)
        output, h_n, c_n, *cells = functional.rnn(
            self.mode, input, batch_sizes, h0, c0, weights, self.bias,
            self.num_layers, self.dropout, self.training, self.bidirectional, self.proj_size > 0,
            cell_states=cell_states, batch_first=self.batch_first and not packed)
        hidden = (h_n, c_n) if lstm else h_n

        if packed:
            output = PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices)
            cells = [PackedSequence(c, batch_sizes, sorted_indices, unsorted_indices)
                     for c in cells]
            return (output, self.permute_hidden(hidden, unsorted_indices), *cells)
        if not batched:
            output = output.squeeze(batch_dim)
            cells = [c.squeeze(batch_dim) for c in cells]
            hidden = (hidden[0].squeeze(1), hidden[1].squeeze(1)) if lstm else hidden.squeeze(1)
        return (output, hidden, *cells)

    def _forward_lengths(self, input: Tensor, hx, lengths, cell_states=False):
        """lengths= (see forward): eager, the ops of packing, running and padding back;
        under torch.compile one op with the padded input's shapes (fused_rnn/_lengths.py)."""
        if isinstance(input, PackedSequence):
            raise ValueError("lengths= is for padded input; a PackedSequence carries its own")
        if input.dim() != 3:
            raise ValueError(
                f"lengths= needs batched 3-D input, got a {input.dim()}-D tensor")
        if torch.is_tensor(lengths):
            lengths = lengths.to("cpu", torch.int64)
        else:
            lengths = torch.as_tensor(lengths, dtype=torch.int64)
        batch_dim = 0 if self.batch_first else 1
        batch = input.size(batch_dim)
        if lengths.dim() != 1 or lengths.numel() != batch:
            raise ValueError(
                f"lengths must be a 1-D sequence with one length per batch element ({batch}), "
                f"got shape {tuple(lengths.shape)}")
        lstm = self.mode == "LSTM"
        if hx is None:
            hx = self._zeros_state(input, batch)
            self.check_input(input, None)
        else:
            self._check_hx_dims(hx, True)
            self.check_forward_args(input, hx, None)
        h0, c0 = hx if lstm else (hx, None)
        args = (self.mode, input, lengths, h0, c0, self._current_weights(), self.bias,
                self.num_layers, self.dropout, self.training, self.bidirectional,
                self.proj_size > 0, self.batch_first, cell_states)
        if torch.compiler.is_compiling():  # (run_lengths checks the lengths' values)
            output, h_n, c_n, cells, _ = torch.ops.fused_rnn.rnn_lengths(*args)
            cells = [cells] if cell_states else []
        else:
            output, h_n, c_n, cells = _lengths.run_lengths(*args)
        return (output, (h_n, c_n) if lstm else h_n, *cells)


class LSTM(RNNBase):
    """Drop-in for torch.nn.LSTM (same arguments, parameters, outputs and errors)."""

    def __init__(self, *args, **kwargs):
        super().__init__("LSTM", *args, **kwargs)

    get_expected_cell_size = torch.nn.LSTM.get_expected_cell_size
    check_forward_args = torch.nn.LSTM.check_forward_args
    permute_hidden = torch.nn.LSTM.permute_hidden


class GRU(RNNBase):
    """Drop-in for torch.nn.GRU (same arguments, parameters, outputs and errors)."""

    def __init__(self, *args, **kwargs):
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        super().__init__("GRU", *args, **kwargs)


class RNN(RNNBase):
    """Drop-in for torch.nn.RNN (same arguments, parameters, outputs and errors)."""

    def __init__(self, *args, **kwargs):
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        if len(args) > 3:
            self.nonlinearity = args[3]
            args = args[:3] + args[4:]
        else:
            self.nonlinearity = kwargs.pop("nonlinearity", "tanh")
        if self.nonlinearity == "tanh":
            mode = "RNN_TANH"
        elif self.nonlinearity == "relu":
            mode = "RNN_RELU"
        else:
            raise ValueError(
                f"Unknown nonlinearity '{self.nonlinearity}'. Select from 'tanh' or 'relu'.")
        super().__init__(mode, *args, **kwargs)


# ---------------------------------------------------------------------------------------------
# Cells: one step, one fused op (the layer op with T = 1) forward and backward.

# c10's names, which torch's matmul uses in its dtype-mismatch message.
_DTYPE_NAMES = {torch.float64: "Double", torch.float32: "Float", torch.float16: "Half",
                torch.bfloat16: "BFloat16"}


class RNNCellBase(torch.nn.RNNCellBase):
    """Shared step of the fused cells. Parameters, initialisation and repr are torch.nn's."""

    def _check_states(self, input: Tensor, states) -> None:
        """torch's check_rnn_cell_forward_input / _hidden, then its matmul's dtype check."""
        if input.size(1) != self.input_size:
            raise RuntimeError(f"input has inconsistent input_size: got {input.size(1)} "
                               f"expected {self.input_size}")
        for label, state in enumerate(states):
            if input.size(0) != state.size(0):
                raise RuntimeError(f"Input batch size {input.size(0)} doesn't match hidden{label} "
                                   f"batch size {state.size(0)}")
            if state.size(1) != self.hidden_size:
                raise RuntimeError(f"hidden{label} has inconsistent hidden_size: got "
                                   f"{state.size(1)}, expected {self.hidden_size}")
        weight = self.weight_ih
        for t in (input, states[0]):
            if t.dtype != weight.dtype:
                raise RuntimeError(
                    "mat1 and mat2 must have the same dtype, but got "
                    f"{_DTYPE_NAMES.get(t.dtype, t.dtype)} and "
                    f"{_DTYPE_NAMES.get(weight.dtype, weight.dtype)}")

    def _step(self, mode: str, input: Tensor, h: Tensor, c: Tensor | None):
        _, hy, cy, _ = rnn_layer(mode, input.unsqueeze(0), None, h, c, self.weight_ih,
                                 self.weight_hh, self.bias_ih, self.bias_hh)
        return hy, cy

    def _batched(self, name: str, input: Tensor, hx, labels):
        if input.dim() not in (1, 2):
            raise ValueError(f"{name}: Expected input to be 1D or 2D, got {input.dim()}D instead")
        for label, state in zip(labels, hx if isinstance(hx, tuple) else (hx,)):
            if state is not None and state.dim() not in (1, 2):
                raise ValueError(
                    f"{name}: Expected {label} to be 1D or 2D, got {state.dim()}D instead")
        return input.dim() == 2


class LSTMCell(RNNCellBase):
    """Drop-in for torch.nn.LSTMCell."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None,
                 dtype=None) -> None:
        super().__init__(input_size, hidden_size, bias, num_chunks=4, device=device, dtype=dtype)

    def forward(self, input: Tensor, hx: tuple[Tensor, Tensor] | None = None):
        batched = self._batched("LSTMCell", input, hx if hx is not None else (None, None),
                                ["hx[0]", "hx[1]"])
        if not batched:
            input = input.unsqueeze(0)
        if hx is None:
            zeros = torch.zeros(input.size(0), self.hidden_size, dtype=input.dtype,
                                device=input.device)
            hx = (zeros, zeros)
        elif not batched:
            hx = (hx[0].unsqueeze(0), hx[1].unsqueeze(0))
        self._check_states(input, hx)
        h, c = self._step("LSTM", input, hx[0], hx[1])
        return (h, c) if batched else (h.squeeze(0), c.squeeze(0))


class GRUCell(RNNCellBase):
    """Drop-in for torch.nn.GRUCell."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None,
                 dtype=None) -> None:
        super().__init__(input_size, hidden_size, bias, num_chunks=3, device=device, dtype=dtype)

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        return _single_state_step(self, "GRUCell", "GRU", input, hx)


class RNNCell(RNNCellBase):
    """Drop-in for torch.nn.RNNCell (nonlinearity 'tanh' or 'relu')."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 nonlinearity: str = "tanh", device=None, dtype=None) -> None:
        super().__init__(input_size, hidden_size, bias, num_chunks=1, device=device, dtype=dtype)
        self.nonlinearity = nonlinearity

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        modes = {"tanh": "RNN_TANH", "relu": "RNN_RELU"}
        return _single_state_step(self, "RNNCell", modes.get(self.nonlinearity), input, hx)


def _single_state_step(cell: RNNCellBase, name: str, mode: str | None, input: Tensor, hx):
    """GRUCell and RNNCell forward, torch.nn's checks in torch.nn's order."""
    batched = cell._batched(name, input, hx, ["hidden"])
    if not batched:
        input = input.unsqueeze(0)
    if hx is None:
        hx = torch.zeros(input.size(0), cell.hidden_size, dtype=input.dtype, device=input.device)
    elif not batched:
        hx = hx.unsqueeze(0)
    if mode is None:
        raise RuntimeError(f"Unknown nonlinearity: {cell.nonlinearity}")
    cell._check_states(input, (hx,))
    h, _ = cell._step(mode, input, hx, None)
    return h if batched else h.squeeze(0)
