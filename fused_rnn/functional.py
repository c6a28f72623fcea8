"""Functional forms: multi-layer, bidirectional RNNs over the fused single-layer op.

`rnn` plays the part of torch's `_VF.lstm/gru/rnn_tanh/rnn_relu`: the module does the argument
checks and hidden-state handling; this runs the layers. The time loop of each layer-direction
runs inside one op call (C++/CUDA), so the Python here runs once per layer and direction.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._ops import rnn_layer


def rnn(mode: str, input, batch_sizes, hx, cx, flat_weights, has_bias: bool, num_layers: int,
        dropout: float, training: bool, bidirectional: bool, has_proj: bool,
        cell_states: bool = False):
    """Runs a stack of layers.

    input: [T, B, I] (seq-first) or packed data [N, I] with batch_sizes.
    hx: [L*D, B, P]; cx: [L*D, B, H] for LSTM, else None.
    flat_weights: per layer and direction, (w_ih, w_hh[, b_ih, b_hh][, w_hr]) as torch.nn
    orders them. Dropout (training only) applies to the output of every layer but the last.
    Returns (output, h_n, c_n), c_n None unless LSTM; with cell_states (LSTM), a fourth item:
    the last layer's c_t for every step, directions concatenated like the output.
    """
    directions = 2 if bidirectional else 1
    per_layer = 2 + (2 if has_bias else 0) + (1 if has_proj else 0)
    lstm = mode == "LSTM"
    train = torch.is_grad_enabled() and (
        input.requires_grad or hx.requires_grad or (lstm and cx.requires_grad)
        or any(w.requires_grad for w in flat_weights))
    h_n, c_n, cells = [], [], []
    layer_input = input
    # One layer-direction: the op takes the [1, B, P] states as they are and returns h_n, c_n
    # in that shape (a select and an unsqueeze fewer each, and their autograd nodes).
    whole = num_layers * directions == 1
    for layer in range(num_layers):
        outputs = []
        for direction in range(directions):
            index = layer * directions + direction
            w = flat_weights[index * per_layer:(index + 1) * per_layer]
            b_ih, b_hh = (w[2], w[3]) if has_bias else (None, None)
            w_hr = w[-1] if has_proj else None
            last = layer == num_layers - 1
            out, hy, cy, c_all = rnn_layer(
                mode, layer_input, batch_sizes, hx if whole else hx[index],
                (cx if whole else cx[index]) if lstm else None, w[0],
                w[1], b_ih, b_hh, w_hr, reverse=direction == 1, train=train,
                cell_states=cell_states and last)
            outputs.append(out)
            cells.append(c_all)
            h_n.append(hy)
            c_n.append(cy)
        layer_input = outputs[0] if directions == 1 else torch.cat(outputs, -1)
        if dropout != 0 and training and layer < num_layers - 1:
            layer_input = F.dropout(layer_input, p=dropout, training=True)
    def stack(states):
        return states[0] if whole else torch.stack(states, 0)

    result = (layer_input, stack(h_n), stack(c_n) if lstm else None)
    if cell_states:
        last_cells = cells[-directions:]
        result += (last_cells[0] if directions == 1 else torch.cat(last_cells, -1),)
    return result
