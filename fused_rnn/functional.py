"""Functional form: multi-layer, bidirectional RNNs over the fused single-layer op.

`rnn` plays the part of torch's `_VF.lstm/gru/rnn_tanh/rnn_relu`: the module does the argument
checks and hidden-state handling; this runs the layers, as one call of the composite op
`torch.ops.fused_rnn.rnn` (csrc/stack.cpp), whose every layer-direction is one call of the
fused layer op (its time loop in C++/CUDA).
"""

from __future__ import annotations

import torch

from ._ops import device_inputs


def rnn(mode: str, input, batch_sizes, hx, cx, flat_weights, has_bias: bool, num_layers: int,
        dropout: float, training: bool, bidirectional: bool, has_proj: bool,
        cell_states: bool = False, batch_first: bool = False):
    """Runs a stack of layers.

    input: [T, B, I] ([B, T, I] with batch_first) or packed data [N, I] with batch_sizes.
    hx: [L*D, B, P]; cx: [L*D, B, H] for LSTM, else None.
    flat_weights: per layer and direction, (w_ih, w_hh[, b_ih, b_hh][, w_hr]) as torch.nn
    orders them. Dropout (training only) applies to the output of every layer but the last.
    Returns (output, h_n, c_n), c_n None unless LSTM; with cell_states (LSTM), a fourth item:
    the last layer's c_t for every step, directions concatenated and laid out like the output.
    """
    input, hx, cx, flat_weights = device_inputs(input, hx, cx, flat_weights)
    output, h_n, c_n, cells = torch.ops.fused_rnn.rnn.default(
        mode, input, batch_sizes, hx, cx, flat_weights, has_bias, num_layers, dropout, training,
        bidirectional, batch_first, has_proj, cell_states)
    result = (output, h_n, c_n if mode == "LSTM" else None)
    return result + (cells,) if cell_states else result
