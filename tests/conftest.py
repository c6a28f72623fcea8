"""Shared helpers: build a torch.nn / fused_rnn pair with equal weights and compare them."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import fused_rnn

@contextlib.contextmanager
def num_threads(n):
    """torch's intra-op thread count set to n inside the block, restored after it."""
    saved = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


# DESIGN.md's tolerances.
TOL = {torch.float64: dict(atol=1e-8, rtol=1e-7), torch.float32: dict(atol=2e-5, rtol=1e-4)}
# On a GPU the fp32 oracle is cuDNN (TF32 off, below), which sums in its own order: weight
# gradients were seen 3.7e-5 (5e-4 relative) apart from fused_rnn's, with fused_rnn's loop in
# one kernel and stepped through cuBLAS alike, while the fp64 runs agree to 1e-8.
TOL_CUDA_F32 = dict(atol=1e-4, rtol=1e-3)

MODES = {  # name -> (torch.nn class name, constructor kwargs)
    "LSTM": ("LSTM", {}),
    "GRU": ("GRU", {}),
    "RNN_TANH": ("RNN", {"nonlinearity": "tanh"}),
    "RNN_RELU": ("RNN", {"nonlinearity": "relu"}),
}

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

if torch.cuda.is_available():
    # The fp32 oracle computes in fp32: by default cuDNN's RNNs use TF32 on Ampere and later
    # (errors ~1e-3 relative, far outside DESIGN.md's fp32 tolerance).
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


@pytest.fixture(params=["block", "steps"])
def cuda_loop(request, monkeypatch):
    """Both ways the CUDA backend runs a layer's time loop (csrc/cuda/block_loop.cuh): the whole
    loop in one kernel, or step by step from the host."""
    monkeypatch.setenv("FUSED_RNN_CUDA_LOOP", request.param)
    return request.param


def make_pair(mode, *args, device="cpu", dtype=torch.float64, **kwargs):
    """torch.nn module and fused_rnn module of the same configuration and weights."""
    cls, extra = MODES[mode]
    kwargs = {**extra, **kwargs}
    ref = getattr(torch.nn, cls)(*args, device=device, dtype=dtype, **kwargs)
    fused = getattr(fused_rnn, cls)(*args, device=device, dtype=dtype, **kwargs)
    fused.load_state_dict(ref.state_dict())
    return ref, fused


def flatten(out):
    """Tensors of an RNN's (output, hidden), PackedSequence data included."""
    output, hidden = out
    if isinstance(output, PackedSequence):
        output = output.data
    hidden = list(hidden) if isinstance(hidden, tuple) else [hidden]
    return [output] + hidden


def layout_pair(mode, inp, hidden, steps, batch, layout, lengths=(), **kwargs):
    """make_pair's modules for `layout` (padded, batch_first or packed_bidirectional), an fp64
    input [steps, batch, inp] ([batch, steps, inp] batch-first) that requires grad, and call(m)
    running a module on it (packed_bidirectional: packed with `lengths`, any order)."""
    ref, fused = make_pair(mode, inp, hidden, bidirectional=layout == "packed_bidirectional",
                           batch_first=layout == "batch_first", **kwargs)
    shape = (batch, steps, inp) if layout == "batch_first" else (steps, batch, inp)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)

    def call(m):
        if layout == "packed_bidirectional":
            return m(pack_padded_sequence(x, lengths, enforce_sorted=False))
        return m(x)

    return ref, fused, x, call


def assert_same_inference(ref, fused, call, **tol):
    """call(fused) without autograd gives call(ref)'s outputs and states (assert_close, `tol`)."""
    with torch.no_grad():
        for a, b in zip(flatten(call(ref)), flatten(call(fused)), strict=True):
            torch.testing.assert_close(b, a, **tol)


def run_and_grad(module, call, leaves, weights_of_loss):
    """Forward (`call(module)`), then gradients of a random linear functional of every output
    tensor with respect to `leaves` (input, hx, ...) and every parameter."""
    tensors = flatten(call(module))
    loss = sum((t * w).sum() for t, w in zip(tensors, weights_of_loss))
    grads = torch.autograd.grad(loss, list(leaves) + list(module.parameters()), allow_unused=True)
    return tensors, grads


def assert_same_run(ref, fused, call, leaves=(), dtype=torch.float64):
    """Runs `call(module)` on both and asserts equal outputs, states and gradients of `leaves`
    and every parameter (DESIGN.md tolerances)."""
    with torch.no_grad():
        ref_out = flatten(call(ref))
    weights = [torch.randn_like(t) for t in ref_out]
    t_ref, g_ref = run_and_grad(ref, call, leaves, weights)
    t_fus, g_fus = run_and_grad(fused, call, leaves, weights)
    assert len(t_ref) == len(t_fus)
    tol = TOL_CUDA_F32 if dtype == torch.float32 and t_ref[0].is_cuda else TOL[dtype]
    for a, b in zip(t_ref, t_fus):
        assert a.shape == b.shape
        torch.testing.assert_close(b, a, **tol)
    names = [f"leaf {i}" for i in range(len(leaves))] + [n for n, _ in ref.named_parameters()]
    for name, a, b in zip(names, g_ref, g_fus, strict=True):
        assert (a is None) == (b is None), name
        if a is not None:
            torch.testing.assert_close(b, a, **tol, msg=lambda m: f"grad of {name}: {m}")


def relative_error(got, want):
    return ((got.double() - want.double()).norm() / want.double().norm()).item()


def assert_low_precision_close(mode, dtype, device, packed=False, **kwargs):
    """fp16/bf16 storage (fp32 math inside) against fp32 on the same rounded weights and inputs
    (DESIGN.md: 1e-2), a 2-layer bidirectional model: outputs and states elementwise, gradients
    by relative norm (a ReLU whose pre-activation sits near 0 may switch between the two runs and
    move single elements by O(1)); every result in the storage dtype, as torch.nn's."""
    kwargs = dict(num_layers=2, bidirectional=True, device=device, **kwargs)
    _, fused32 = make_pair(mode, 5, 6, dtype=torch.float32, **kwargs)
    _, fused16 = make_pair(mode, 5, 6, dtype=dtype, **kwargs)
    with torch.no_grad():
        for p in fused32.parameters():
            p.copy_(p.to(dtype).float())
    fused16.load_state_dict(fused32.state_dict())
    x = torch.randn(7, 4, 5, device=device)
    x16 = x.to(dtype).requires_grad_()
    x32 = x16.detach().float().requires_grad_()

    def call(m, inp):
        return m(pack_padded_sequence(inp, [3, 7, 1, 5], enforce_sorted=False) if packed else inp)

    outs32, outs16 = flatten(call(fused32, x32)), flatten(call(fused16, x16))
    for a, b in zip(outs32, outs16, strict=True):
        assert b.dtype == dtype
        torch.testing.assert_close(b.float(), a, atol=1e-2, rtol=1e-2)
    sum(o.sum() for o in outs32).backward()
    sum(o.float().sum() for o in outs16).backward()
    assert x16.grad.dtype == dtype
    assert relative_error(x16.grad, x32.grad) < 2e-2
    for (name, p32), p16 in zip(fused32.named_parameters(), fused16.parameters(), strict=True):
        assert p16.grad.dtype == dtype, name
        assert relative_error(p16.grad, p32.grad) < 2e-2, name


def packed_input(T, B, I, lengths, enforce_sorted, dtype, device="cpu"):
    x = torch.randn(T, B, I, dtype=dtype, device=device, requires_grad=True)
    return x, pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)
