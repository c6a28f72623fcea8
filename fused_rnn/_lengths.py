"""Variable lengths on padded input (`module(x, lengths=...)`), eager and under torch.compile.

Eager, `run_lengths` packs the input by its lengths, runs the layer stack on the packed rows
(the kernels' steps work on the rows still active) and pads the results back: autograd records
those ops, as for a PackedSequence.

torch.compile cannot capture that: torch skips `pack_padded_sequence` (a graph break), and the
packed rows' count is a value of `lengths`, not a shape. There the module calls
`torch.ops.fused_rnn.rnn_lengths`, which does the same inside one op whose results have the
padded input's static shapes (fake kernel below), so a model with variable lengths compiles with
`fullgraph=True` and dynamic shapes. Its backward (`rnn_lengths_backward`) runs the forward again
with autograd on, from the saved inputs, and takes its gradients, the way activation
checkpointing does: a compiled training step pays one more forward for its lengths. Where dropout
draws masks (training, dropout > 0, two layers or more), the random generator's state from before
the forward is an output of the op, and the backward's forward draws from it again.
"""

from __future__ import annotations

import contextlib
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from . import functional


def run_lengths(mode: str, input: Tensor, lengths: Tensor, h0: Tensor, c0: Optional[Tensor],
                weights: Sequence[Tensor], has_biases: bool, num_layers: int, dropout: float,
                train: bool, bidirectional: bool, has_proj: bool, batch_first: bool,
                cell_states: bool):
    """(output, h_n, c_n or None, [cells]) of padded `input` run with `lengths` (int64, on the
    CPU): the results of packing it with enforce_sorted=False, running, and padding back to its
    length; h_n and c_n in the input's batch order."""
    total = input.size(1 if batch_first else 0)
    if lengths.numel() and int(lengths.max()) > total:  # (their shape the module checks)
        raise ValueError(
            f"lengths must not exceed the sequence length {total}, got {int(lengths.max())}")
    data, batch_sizes, order, unorder = pack_padded_sequence(
        input, lengths, batch_first=batch_first, enforce_sorted=False)
    c0 = None if c0 is None else c0.index_select(1, order)
    output, h_n, c_n, *cells = functional.rnn(
        mode, data, batch_sizes, h0.index_select(1, order), c0, list(weights), has_biases,
        num_layers, dropout, train, bidirectional, has_proj, cell_states=cell_states)

    def pad(rows):
        return pad_packed_sequence(PackedSequence(rows, batch_sizes, order, unorder),
                                   batch_first=batch_first, total_length=total)[0]

    c_n = None if c_n is None else c_n.index_select(1, unorder)
    return pad(output), h_n.index_select(1, unorder), c_n, [pad(c) for c in cells]


def _draws_masks(train: bool, dropout: float, num_layers: int) -> bool:
    return train and dropout > 0 and num_layers > 1


def _rng_state(device: torch.device) -> Tensor:
    if device.type == "cuda":
        return torch.cuda.get_rng_state(device)
    return torch.get_rng_state()


def _bytes(n: int) -> Tensor:
    """A generator state's shape: bytes on the CPU, whatever the device."""
    return torch.empty(n, dtype=torch.uint8, device="cpu")


def _nothing(like: Tensor) -> Tensor:
    return like.new_empty(0)


@torch.library.custom_op("fused_rnn::rnn_lengths", mutates_args=())
def rnn_lengths(mode: str, input: Tensor, lengths: Tensor, h0: Tensor, c0: Optional[Tensor],
                weights: List[Tensor], has_biases: bool, num_layers: int, dropout: float,
                train: bool, bidirectional: bool, has_proj: bool, batch_first: bool,
                cell_states: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """run_lengths as one op: (output, h_n, c_n, cells, rng_state); c_n, cells and rng_state
    empty where there is none (not LSTM, cell_states off, no dropout masks)."""
    draws = _draws_masks(train, dropout, num_layers)
    rng = _rng_state(input.device) if draws else _bytes(0)
    output, h_n, c_n, cells = run_lengths(
        mode, input, lengths, h0, c0, weights, has_biases, num_layers, dropout, train,
        bidirectional, has_proj, batch_first, cell_states)
    return (output, h_n, _nothing(output) if c_n is None else c_n,
            cells[0] if cells else _nothing(output), rng)


@rnn_lengths.register_fake
def _(mode, input, lengths, h0, c0, weights, has_biases, num_layers, dropout, train,
      bidirectional, has_proj, batch_first, cell_states):
    directions = 2 if bidirectional else 1
    steps = input.shape[:2]
    output = input.new_empty(*steps, directions * h0.size(-1))
    cells = (input.new_empty(*steps, directions * c0.size(-1)) if cell_states
             else _nothing(input))
    draws = _draws_masks(train, dropout, num_layers)
    rng = _bytes(_rng_state(input.device).numel() if draws else 0)
    return (output, h0.new_empty(h0.shape), _nothing(input) if c0 is None else
            c0.new_empty(c0.shape), cells, rng)


def _leaves(input, h0, c0, weights):
    """What rnn_lengths_backward returns gradients of, in its order."""
    return [input, h0] + ([c0] if c0 is not None else []) + list(weights)


@contextlib.contextmanager
def _autograd_on():
    """Autograd back on inside an op's kernel, which torch runs with grad mode off and the
    Autograd dispatch keys excluded (torch has no public guard for this)."""
    exclude = torch._C._dispatch_tls_local_exclude_set()
    for key in ("AutogradFunctionality", "AutogradOther", "AutogradNestedTensor"):
        exclude = exclude.remove(getattr(torch._C.DispatchKey, key))
    with torch._C._ForceDispatchKeyGuard(torch._C._dispatch_tls_local_include_set(), exclude):
        with torch.enable_grad():
            yield


@torch.library.custom_op("fused_rnn::rnn_lengths_backward", mutates_args=())
def rnn_lengths_backward(grad_output: Optional[Tensor], grad_h_n: Optional[Tensor],
                         grad_c_n: Optional[Tensor], grad_cells: Optional[Tensor],
                         rng_state: Tensor, mode: str, input: Tensor, lengths: Tensor, h0: Tensor,
                         c0: Optional[Tensor], weights: List[Tensor], has_biases: bool,
                         num_layers: int, dropout: float, train: bool, bidirectional: bool,
                         has_proj: bool, batch_first: bool, cell_states: bool) -> List[Tensor]:
    """Gradients of input, h0, (c0,) and every weight, in that order: the forward run again
    (in the module's mode, `train`) with autograd on, dropout from rng_state where there is one."""
    leaves = [t.detach().requires_grad_() for t in _leaves(input, h0, c0, weights)]
    x, h, c = leaves[0], leaves[1], leaves[2] if c0 is not None else None
    w = leaves[3 if c0 is not None else 2:]
    devices = [input.device] if input.device.type == "cuda" else []
    with _autograd_on(), torch.random.fork_rng(devices=devices, enabled=rng_state.numel() > 0):
        if rng_state.numel():
            if input.device.type == "cuda":
                torch.cuda.set_rng_state(rng_state, input.device)
            else:
                torch.set_rng_state(rng_state)
        output, h_n, c_n, cells = run_lengths(
            mode, x, lengths, h, c, w, has_biases, num_layers, dropout, train, bidirectional,
            has_proj, batch_first, cell_states)
        pairs = [(o, g) for o, g in [(output, grad_output), (h_n, grad_h_n), (c_n, grad_c_n),
                                     (cells[0] if cells else None, grad_cells)]
                 if o is not None and g is not None]
        outs, grads_out = zip(*pairs) if pairs else ((), ())
        grads = (torch.autograd.grad(outs, leaves, grads_out, allow_unused=True) if pairs
                 else [None] * len(leaves))
    return [torch.zeros_like(t) if g is None else g for t, g in zip(leaves, grads)]


@rnn_lengths_backward.register_fake
def _(grad_output, grad_h_n, grad_c_n, grad_cells, rng_state, mode, input, lengths, h0, c0,
      weights, *args):
    return [torch.empty_like(t) for t in _leaves(input, h0, c0, weights)]


_ARGS = ("mode", "input", "lengths", "h0", "c0", "weights", "has_biases", "num_layers",
         "dropout", "train", "bidirectional", "has_proj", "batch_first", "cell_states")


def _setup_context(ctx, inputs, output):
    args = dict(zip(_ARGS, inputs))
    ctx.lstm = args["c0"] is not None
    ctx.args = {k: args[k] for k in ("mode", "has_biases", "num_layers", "dropout", "train",
                                     "bidirectional", "has_proj", "batch_first", "cell_states")}
    ctx.save_for_backward(args["input"], args["lengths"], args["h0"], args["c0"], output[4],
                          *args["weights"])


def _backward(ctx, grad_output, grad_h_n, grad_c_n, grad_cells, _grad_rng):
    input, lengths, h0, c0, rng, *weights = ctx.saved_tensors
    a = ctx.args
    grads = torch.ops.fused_rnn.rnn_lengths_backward(
        grad_output, grad_h_n, grad_c_n if ctx.lstm else None,
        grad_cells if a["cell_states"] else None, rng, a["mode"], input, lengths, h0, c0,
        weights, a["has_biases"], a["num_layers"], a["dropout"], a["train"], a["bidirectional"],
        a["has_proj"], a["batch_first"], a["cell_states"])
    grad_input, grad_h0 = grads[0], grads[1]
    grad_c0 = grads[2] if ctx.lstm else None
    grad_weights = list(grads[3 if ctx.lstm else 2:])
    return (None, grad_input, None, grad_h0, grad_c0, grad_weights) + (None,) * 8


rnn_lengths.register_autograd(_backward, setup_context=_setup_context)
