"""The registered ops: loading the extension, fake (meta) kernels, the Python entry point.

`torch.ops.fused_rnn.rnn_forward` runs one layer in one direction over a whole sequence
(csrc/ops.cpp documents its arguments); its backward is the registered op
`torch.ops.fused_rnn.rnn_backward`, wired in C++ (csrc/autograd.cpp: a Python
autograd.Function cost more than the kernels on small models), or, when the graph is not
retained, `rnn_backward_consume`, which writes its gate gradients over the workspace. The ops
have fake kernels here, so `torch.compile(fullgraph=True)` traces through them.
"""

from __future__ import annotations

import functools

import torch

from . import _build_info


def _cpu_has(features) -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split() for line in f if line.startswith("flags")), [])
        return all(feature in flags for feature in features)
    except OSError:  # not Linux: ask torch (which an ATEN_CPU_CAPABILITY override can lower)
        wanted = ("AVX512",) if "avx512f" in features else ("AVX2", "AVX512")
        return torch.backends.cpu.get_cpu_capability() in wanted


# The features the build's CPU kernels use (setup.py: CPU_TIERS; none in a generic build).
if _build_info.CPU_FEATURES and not _cpu_has(_build_info.CPU_FEATURES):
    raise ImportError(
        f"fused_rnn was built with {_build_info.CPU_CAPABILITY} CPU kernels (the building machine "
        f"had {'/'.join(f.upper() for f in _build_info.CPU_FEATURES)}) but this CPU lacks some of "
        "them; rebuild here, or with FUSED_RNN_NO_AVX512=1 (AVX2 code) or FUSED_RNN_NO_AVX2=1 "
        "(generic code)")

from . import _C  # noqa: F401,E402  (loading the library registers torch.ops.fused_rnn.*)

_GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}
# Values per hidden unit that forward saves for backward (csrc/cells.h: saved_of).
_SAVED = {"LSTM": 4, "GRU": 4, "RNN_TANH": 1, "RNN_RELU": 1}


def gates_of(mode: str) -> int:
    return _GATES[mode]


def workspace_numel(mode: str, rows, hidden: int, state: int, proj: bool):
    """Size of the training workspace of one layer-direction (csrc/sequence.h: LayerDims::ws_cols):
    saved gates | h_{t-1} | c_{t-1} (LSTM) | o*tanh(c) (projected LSTM), per time-major row."""
    cols = _SAVED[mode] * hidden + state
    if mode == "LSTM":
        cols += hidden
    if proj:
        cols += hidden
    return rows * cols


@torch.library.register_fake("fused_rnn::rnn_forward")
def _rnn_forward_fake(mode, input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, reverse,
                      train, cell_states=False, input_batch_first=False):
    hidden = w_ih.shape[0] // gates_of(mode)
    state = hx.shape[-1]
    rows = input.shape[0] if batch_sizes is not None else input.shape[0] * input.shape[1]
    steps = input.shape[:-1]  # the output's leading dims: time-major, whatever the input's
    if input_batch_first:
        steps = (steps[1], steps[0])
    output = input.new_empty((*steps, state))
    hy = hx.new_empty(hx.shape)
    cy = cx.new_empty(cx.shape) if mode == "LSTM" else input.new_empty((0,))
    cells = input.new_empty((*steps, hidden) if cell_states else (0,))
    numel = workspace_numel(mode, rows, hidden, state, w_hr is not None) if train else 0
    return output, hy, cy, cells, input.new_empty((numel,))


@torch.library.register_fake("fused_rnn::rnn_backward")
def _rnn_backward_fake(mode, input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, reverse,
                       workspace, grad_output, grad_hy, grad_cy, grad_cell_states=None,
                       input_grad=True, hx_grad=True, input_batch_first=False):
    def like(t):  # the kernel returns contiguous gradients, whatever the inputs' strides
        return t.new_empty(t.shape) if t is not None else input.new_empty((0,))

    return (like(input), like(hx), like(cx if mode == "LSTM" else None), like(w_ih), like(w_hh),
            like(b_ih), like(b_hh), like(w_hr))


@torch.library.register_fake("fused_rnn::rnn_backward_consume")
def _rnn_backward_consume_fake(cell, *args, **kwargs):
    return _rnn_backward_fake(cell, *args, **kwargs)


@functools.lru_cache(maxsize=None)
def _has_cuda_kernels() -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key("fused_rnn::rnn_forward", "CUDA")


def check_build(device: torch.device) -> None:
    """A CUDA tensor given to a build without CUDA kernels: say so, and how to fix it."""
    if device.type == "cuda" and not _has_cuda_kernels():
        raise RuntimeError(
            "fused_rnn was built without CUDA kernels, so it cannot run on CUDA tensors. Rebuild "
            "it where nvcc and a CUDA build of torch are installed (pip install "
            "--no-build-isolation -e . , without FUSED_RNN_CPU_ONLY=1 set); "
            "fused_rnn.backend_info() shows what the current build holds.")


def autocast_dtype(device: torch.device):
    """The dtype CUDA autocast runs RNNs in (torch.nn's RNNs are on autocast's lower-precision
    list there), or None. CPU autocast is not applied: the CPU kernels are fp32/fp64 only, and
    run in the input's dtype."""
    if device.type == "cuda" and torch.is_autocast_enabled("cuda"):
        return torch.get_autocast_dtype("cuda")
    return None


def device_inputs(input, *tensors):
    """The op's tensor arguments as the kernels take them: on CUDA, a build check, and under CUDA
    autocast everything cast to the autocast dtype, as torch.nn's RNNs and cells run there (the
    ops have no autocast kernels; this is the one place that casts). The CPU needs neither."""
    if not input.is_cuda:  # (input.device costs ~1 us)
        return (input, *tensors)
    check_build(input.device)
    cast = autocast_dtype(input.device)
    if cast is None:
        return (input, *tensors)

    def to(t):
        if isinstance(t, (list, tuple)):
            return [to(u) for u in t]
        return t.to(cast) if t is not None else None

    return tuple(to(t) for t in (input, *tensors))


def rnn_layer(mode: str, input, batch_sizes, hx, cx, w_ih, w_hh, b_ih=None, b_hh=None, w_hr=None,
              reverse: bool = False, train: bool | None = None, cell_states: bool = False):
    """One layer, one direction: returns (output, h_n, c_n, cells); c_n is empty unless LSTM,
    cells (c_t of every step, shaped like output with hidden_size features) unless asked for.

    `train` (default: whether autograd will need the result) decides whether the workspace that
    backward reads is kept.
    """
    input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr = device_inputs(
        input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr)
    if train is None:
        train = torch.is_grad_enabled() and any(
            t is not None and t.requires_grad
            for t in (input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr))
    output, hy, cy, cells, _ = torch.ops.fused_rnn.rnn_forward(
        mode, input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, train, cell_states)
    return output, hy, cy, cells
