"""The registered ops: opcheck (schema, fake kernel, autograd registration, AOT dispatch) and
gradcheck in fp64, every mode, projected, packed, reversed."""

import platform
import warnings

import pytest
import torch

import fused_rnn
from fused_rnn import _ops
from conftest import DEVICES, TOL, make_pair
from fused_rnn.info import OPS, has_kernel

I, H, P, T, B = 3, 4, 2, 5, 3
MODES = ["LSTM", "GRU", "RNN_TANH", "RNN_RELU"]


def layer_args(mode, proj=False, packed=False, bias=True, reverse=False, train=True,
               dtype=torch.float64, requires_grad=True, cells=False, device="cpu",
               batch_sizes=(3, 3, 2, 1, 1), zero_h0=False, hidden=H, proj_size=P):
    """A layer op call's arguments: T x B padded input, or packed with `batch_sizes`; h0 of
    zeros with `zero_h0`."""
    g = _ops.gates_of(mode) * hidden
    state = proj_size if proj else hidden

    def t(*shape):
        return torch.randn(*shape, dtype=dtype, device=device, requires_grad=requires_grad)

    if packed:
        batch_sizes = torch.tensor(batch_sizes)
        x = t(int(batch_sizes.sum()), I)
    else:
        x = t(len(batch_sizes), batch_sizes[0], I)
        batch_sizes = None
    batch = x.size(1) if batch_sizes is None else int(batch_sizes[0])
    h0 = t(batch, state)
    if zero_h0:
        h0 = torch.zeros_like(h0).requires_grad_(requires_grad)
    # bias: True (both), False (none), or "ih" / "hh" (only that one: the op allows it)
    return (mode, x, batch_sizes, h0, t(batch, hidden) if mode == "LSTM" else None, t(g, I),
            t(g, state), t(g) if bias in (True, "ih") else None,
            t(g) if bias in (True, "hh") else None,
            t(proj_size, hidden) if proj else None, reverse, train, cells)



def needing_grad(args):
    """The positions of an op call's arguments that need gradients, and a function that puts
    given tensors there (what gradcheck differentiates)."""
    positions = [i for i, a in enumerate(args) if torch.is_tensor(a) and a.requires_grad]

    def with_tensors(ts):
        full = list(args)
        for pos, t in zip(positions, ts, strict=True):
            full[pos] = t
        return full

    return positions, with_tensors

CASES = [
    dict(mode=m, proj=proj, packed=packed, reverse=rev, bias=bias, cells=cells)
    for m in MODES
    for proj in ([False, True] if m == "LSTM" else [False])
    for packed in (False, True)
    for rev in (False, True)
    for bias in (True, False)
    for cells in ([False, True] if m == "LSTM" and bias else [False])
]


# One bias only (an op-level call; torch.nn has both or neither): its gradient still comes back.
CASES += [dict(mode=m, proj=False, packed=False, reverse=False, bias=which, cells=False)
          for m in MODES for which in ("ih", "hh")]


def case_id(c):
    bias = {True: [], False: ["nobias"], "ih": ["only_b_ih"], "hh": ["only_b_hh"]}[c["bias"]]
    return "-".join([c["mode"]] + [k for k in ("proj", "packed", "reverse", "cells") if c[k]]
                    + bias)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_opcheck_forward(case, device):
    args = layer_args(**case, device=device)
    torch.library.opcheck(torch.ops.fused_rnn.rnn_forward.default, args)


def backward_inputs(case, device, dtype=torch.float64):
    """A forward op call's arguments, its workspace and random output gradients."""
    args = layer_args(**case, requires_grad=False, device=device, dtype=dtype)
    output, hy, cy, cells, workspace = torch.ops.fused_rnn.rnn_forward(*args)
    grads = (torch.randn_like(output), torch.randn_like(hy),
             torch.randn_like(cy) if args[0] == "LSTM" else None,
             torch.randn_like(cells) if case["cells"] else None)
    return args, workspace, grads


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", ["rnn_backward", "rnn_backward_consume"])
@pytest.mark.parametrize("case", [c for c in CASES if c["bias"]], ids=case_id)
def test_opcheck_backward(case, op, device):
    """Both backward ops; opcheck also checks that rnn_backward_consume mutates nothing but its
    (declared) workspace, and that the plain op mutates nothing."""
    args, workspace, grads = backward_inputs(case, device)
    torch.library.opcheck(getattr(torch.ops.fused_rnn, op).default,
                          (*args[:11], workspace, *grads))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", [c for c in CASES if c["bias"] is True and not c["reverse"]],
                         ids=case_id)
def test_opcheck_low_precision_cpu(case, dtype):
    """fp16/bf16 on the CPU (fp32 kernels on fp32 copies): the results, workspace included, in
    the input's dtype, as the fake kernels say."""
    torch.library.opcheck(torch.ops.fused_rnn.rnn_forward.default, layer_args(**case, dtype=dtype))
    args, workspace, grads = backward_inputs(case, "cpu", dtype)
    assert workspace.dtype == dtype
    for op in ("rnn_backward", "rnn_backward_consume"):
        torch.library.opcheck(getattr(torch.ops.fused_rnn, op).default,
                              (*args[:11], workspace.clone(), *grads))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("steps,batch,inputs,hidden,h0", [
    (1, 1, 37, 96, "zeros"),  # one row: the weights read in place, W_hh's product left out
    (3, 2, 37, 96, "random"),  # a few rows: W_hh read in place at every step; I's partial lane
    (2, 40, 64, 64, "random"),  # 80 rows: packed from an fp32 copy
    (1, 4, 300, 40, "nan"),  # zero h0 but a NaN in W_hh: 0 * NaN is NaN, the product stays
    (2, 3, 64, 512, "random"),  # W_hh of 1-4 MB in fp32: the backward reads it row-major in place
])
def test_low_precision_weights_in_place(dtype, mode, steps, batch, inputs, hidden, h0):
    """The CPU's fp16/bf16 ops keep the weights as they are (CPUBackend::kHalfWeights: read in
    place and widened in registers, or copied to fp32 where they are packed), all else in fp32
    copies: the results are those of the fp32 kernels on the fp32 values of the same arguments
    (the backward's workspace the rounded one the forward saved), rounded: exactly, except where the fp32 weight would go to the BLAS (a row-major one of
    1 MB or more, the backward's) and a half one to small_gemm, which sums in its own order."""
    g = _ops.gates_of(mode) * hidden
    args = [torch.randn(steps, batch, inputs), torch.randn(batch, hidden),
            torch.randn(batch, hidden) if mode == "LSTM" else None,
            torch.randn(g, inputs) * 0.1, torch.randn(g, hidden) * 0.1, torch.randn(g),
            torch.randn(g)]
    if h0 != "random":
        args[1].zero_()
    if h0 == "nan":
        args[4][g // 2, hidden // 3] = float("nan")
    half = [None if a is None else a.to(dtype) for a in args]
    wide = [None if a is None else a.float() for a in half]
    blas = g * hidden * 4 >= 1 << 20

    def same(got, want, exact):
        for a, b in zip(got, want, strict=True):
            assert a.dtype == dtype
            if exact:
                torch.testing.assert_close(a, b.to(dtype), rtol=0, atol=0, equal_nan=True)
            elif b.numel():  # within two of the dtype's ulps of the fp32 result
                eps = torch.finfo(dtype).eps
                torch.testing.assert_close(a.float(), b, rtol=2 * eps,
                                           atol=2 * eps * float(b.abs().max()), equal_nan=True)

    for train in (False, True):
        got = torch.ops.fused_rnn.rnn_forward(mode, half[0], None, *half[1:], None, False, train)
        want = torch.ops.fused_rnn.rnn_forward(mode, wide[0], None, *wide[1:], None, False, train)
        same(got, want, exact=True)
        assert got[0].isnan().any() == (h0 == "nan")
    grads = [torch.randn_like(t, dtype=torch.float32).to(dtype) for t in got[:2]]
    grads.append(torch.randn_like(got[2], dtype=torch.float32).to(dtype) if mode == "LSTM"
                 else None)
    for op in ("rnn_backward", "rnn_backward_consume"):
        backward = getattr(torch.ops.fused_rnn, op)
        got_b = backward(mode, half[0], None, *half[1:], None, False, got[4].clone(), *grads)
        want_b = backward(mode, wide[0], None, *wide[1:], None, False, got[4].float(),
                          *[None if t is None else t.float() for t in grads])
        same(got_b, want_b, exact=not blas)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", [c for c in CASES if c["bias"]], ids=case_id)
def test_backward_ops_agree(case, device):
    """rnn_backward_consume returns exactly rnn_backward's gradients (bitwise: the same
    arithmetic in the same order, only the buffer differs)."""
    args, workspace, grads = backward_inputs(case, device)
    plain = torch.ops.fused_rnn.rnn_backward(*args[:11], workspace, *grads)
    consumed = torch.ops.fused_rnn.rnn_backward_consume(*args[:11], workspace.clone(), *grads)
    for a, b in zip(plain, consumed, strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("flags", [(False, True), (True, False), (False, False)],
                         ids=["no_input_grad", "no_hx_grad", "neither"])
@pytest.mark.parametrize("case", [c for c in CASES if c["bias"]], ids=case_id)
def test_backward_skips_unneeded_grads(case, flags, device):
    """input_grad / hx_grad False: that gradient comes back as zeros, every other one exactly
    as with both True (skipping a product changes nothing else)."""
    input_grad, hx_grad = flags
    args, workspace, grads = backward_inputs(case, device)
    full = torch.ops.fused_rnn.rnn_backward(*args[:11], workspace, *grads)
    part = torch.ops.fused_rnn.rnn_backward(*args[:11], workspace, *grads,
                                            input_grad=input_grad, hx_grad=hx_grad)
    for i, (a, b) in enumerate(zip(full, part, strict=True)):
        skipped = (i == 0 and not input_grad) or (i == 1 and not hx_grad)
        torch.testing.assert_close(b, torch.zeros_like(a) if skipped else a, rtol=0, atol=0)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("x_grad,h0", [(True, None), (False, None), (False, "grad"),
                                        (True, "plain")])
def test_module_grads_when_input_or_h0_need_none(mode, x_grad, h0):
    """The autograd node asks for the input's and h0's gradients only where something needs
    them (a data input, the zeros h0 of a model called without one): every gradient that is
    computed is still torch.nn's, two layers deep (the second layer's input always needs it)."""
    torch.manual_seed(0)
    cls = {"LSTM": "LSTM", "GRU": "GRU"}.get(mode, "RNN")
    kw = {"nonlinearity": "relu" if mode == "RNN_RELU" else "tanh"} if cls == "RNN" else {}
    ref = getattr(torch.nn, cls)(I, H, num_layers=2, dtype=torch.float64, **kw)
    fused = getattr(fused_rnn, cls)(I, H, num_layers=2, dtype=torch.float64, **kw)
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=x_grad)
    hx = None
    if h0 is not None:
        h = torch.randn(2, B, H, dtype=torch.float64, requires_grad=h0 == "grad")
        hx = (h, torch.randn(2, B, H, dtype=torch.float64)) if mode == "LSTM" else h
    leaves = [t for t in [x] + ([hx[0]] if mode == "LSTM" and hx else [hx] if hx is not None
                                else []) if t is not None and t.requires_grad]
    results = []
    for m in (ref, fused):
        out, _ = m(x, hx)
        results.append(torch.autograd.grad(out.sin().sum(), leaves + list(m.parameters())))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(b, a, atol=1e-8, rtol=1e-7)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_gradcheck(case, device):
    check_gradients(layer_args(**case, device=device))


# h0 of zeros on 8+ rows, a state of 8+ units: processing step 0's recurrent products are left
# out (csrc/sequence.h: first_state_zero); gradcheck's perturbations of h0 take it off zero, so
# its numerical Jacobian comes from both ways. Packed: the reverse direction starts 9 of the 10
# rows at its step 0, the last one a step later from h0.
@pytest.mark.parametrize("steps", [1, 4])
@pytest.mark.parametrize("case", [c for c in CASES if c["bias"] is True and not c["cells"]],
                         ids=case_id)
def test_gradcheck_zero_h0(case, steps):
    sizes = (10, 10, 9, 9)[:steps] if case["packed"] else (10,) * steps
    check_gradients(layer_args(**case, batch_sizes=sizes, zero_h0=True, hidden=9, proj_size=8))


def check_gradients(args):
    mode, reverse, cells = args[0], args[10], args[12]
    positions, with_tensors = needing_grad(args)

    def fn(*ts):
        full = with_tensors(ts)
        output, hy, cy, c_all = _ops.rnn_layer(*full[:10], reverse=reverse, train=True,
                                               cell_states=cells)
        if mode != "LSTM":
            return output, hy
        return (output, hy, cy, c_all) if cells else (output, hy, cy)

    assert torch.autograd.gradcheck(fn, [args[i] for i in positions], eps=1e-6, atol=1e-5,
                                    rtol=1e-4)


STATE_CASES = [c for c in CASES if c["bias"] is True and not c["reverse"]]


@pytest.mark.parametrize("case", STATE_CASES, ids=case_id)
def test_leading_one_states(case):
    """hx/cx given as [1, B, *] (how a one-layer module holds them): the same results as [B, *],
    hy/cy and their gradients shaped like hx/cx; opcheck (fake kernel) and gradcheck."""
    args = list(layer_args(**case))
    mode = args[0]
    flat = torch.ops.fused_rnn.rnn_forward(*args)
    args3 = list(args)
    args3[3] = args[3].detach().unsqueeze(0).requires_grad_()
    if mode == "LSTM":
        args3[4] = args[4].detach().unsqueeze(0).requires_grad_()
    out3 = torch.ops.fused_rnn.rnn_forward(*args3)
    torch.testing.assert_close(out3[0], flat[0], rtol=0, atol=0)
    assert out3[1].shape == args3[3].shape
    torch.testing.assert_close(out3[1][0], flat[1], rtol=0, atol=0)
    if mode == "LSTM":
        assert out3[2].shape == args3[4].shape
        torch.testing.assert_close(out3[2][0], flat[2], rtol=0, atol=0)
    torch.library.opcheck(torch.ops.fused_rnn.rnn_forward.default, tuple(args3))
    states = [args3[3]] + ([args3[4]] if mode == "LSTM" else [])

    def fn(*ts):
        full = list(args3)
        full[3:3 + len(ts)] = ts
        output, hy, cy, _ = _ops.rnn_layer(*full[:10], train=True)
        return (output, hy, cy) if mode == "LSTM" else (output, hy)

    assert torch.autograd.gradcheck(fn, states, eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("shape", [(2, B, H), (1, 1, B, H), (H,)])
def test_bad_state_shapes_raise(shape):
    args = list(layer_args("LSTM"))
    args[3] = torch.zeros(shape, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="hx must be"):
        torch.ops.fused_rnn.rnn_forward(*args)


def test_state_dims_must_match_raises():
    args = list(layer_args("LSTM"))
    args[3] = args[3].detach().unsqueeze(0)
    args[4] = torch.zeros(B, H, dtype=torch.float64)  # 2-D cx with 3-D hx
    with pytest.raises(RuntimeError, match="cx must be shaped like hx"):
        torch.ops.fused_rnn.rnn_forward(*args)


def test_backward_without_workspace_raises():
    args = layer_args("LSTM", train=False)
    output, *_ = torch.ops.fused_rnn.rnn_forward(*args)
    with pytest.raises(RuntimeError, match="train=False"):
        output.sum().backward()


@pytest.mark.parametrize("op", OPS)
def test_cpu_kernel_registered(op):
    assert has_kernel(op, "CPU")


def test_backend_info():
    info = fused_rnn.backend_info()
    assert info["cpu"] is True
    assert info["torch"] == torch.__version__
    # The registered CUDA kernels are what the build says it compiled.
    assert info["cuda"] == info["cuda_compiled"]


def test_cpu_capability_is_the_widest():
    """The CPU kernels are built for the widest tier (setup.py: CPU_TIERS) whose features this
    CPU has, unless a switch turned it off when it was built (an AVX2 build on an AVX-512
    machine runs its GEMMs at half the lane width)."""
    from fused_rnn import _build_info, _ops
    capability = fused_rnn.backend_info()["cpu_capability"]
    assert capability == _build_info.CPU_CAPABILITY
    assert _ops._cpu_has(_build_info.CPU_FEATURES)
    if platform.machine() not in ("x86_64", "AMD64"):
        assert capability == "DEFAULT"
        return
    tiers = _build_info.CPU_TIERS  # widest first: (capability, switch, features)
    widest = next((capability for i, (capability, _, features) in enumerate(tiers)
                   if not any(switch in _build_info.CPU_SWITCHES for _, switch, _ in tiers[i:])
                   and _ops._cpu_has(features)), "DEFAULT")
    assert capability == widest


@pytest.mark.parametrize("mode", MODES)
def test_opcheck_noncontiguous(mode):
    """Strided input and hx (a batch_first transpose, a slice): the fake kernels must report the
    strides the kernels return (contiguous), or inductor's stride asserts fail."""
    args = list(layer_args(mode))
    args[1] = torch.randn(B, T, I, dtype=torch.float64).transpose(0, 1).requires_grad_()
    args[3] = torch.randn(B, 2 * H, dtype=torch.float64)[:, ::2].requires_grad_()
    torch.library.opcheck(torch.ops.fused_rnn.rnn_forward.default, tuple(args))
    args = [a.detach() if torch.is_tensor(a) else a for a in args]
    output, hy, cy, cells, workspace = torch.ops.fused_rnn.rnn_forward(*args)
    grad_out = torch.randn(T, 2 * B, H, dtype=torch.float64)[:, ::2]
    bw_args = (*args[:11], workspace, grad_out, torch.randn_like(hy),
               torch.randn_like(cy) if mode == "LSTM" else None, None)
    torch.library.opcheck(torch.ops.fused_rnn.rnn_backward.default, bw_args)


@pytest.mark.parametrize("mode", MODES)
def test_create_graph_gives_the_same_gradients(mode):
    """create_graph=True through an RNN (torch.func.grad always asks for it) gives the fused
    kernel's gradients, bitwise, now differentiable (RNNLayerDoubleBackward)."""
    args = layer_args(mode)
    leaves = [a for a in args if torch.is_tensor(a) and a.requires_grad]
    output, *_ = _ops.rnn_layer(*args[:10], train=True)
    plain = torch.autograd.grad(output.square().sum(), leaves, retain_graph=True)
    graphed = torch.autograd.grad(output.square().sum(), leaves, create_graph=True)
    for a, b in zip(plain, graphed, strict=True):
        assert b.requires_grad
        torch.testing.assert_close(b, a, rtol=0, atol=0)


# Double backward through the ops: every mode, projected, packed, reversed, cell states.
DOUBLE_CASES = [c for c in CASES if c["bias"] is True]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", DOUBLE_CASES, ids=case_id)
def test_gradgradcheck(case, device):
    """fp64 gradgradcheck of rnn_forward (through its autograd kernel): the derivatives of its
    gradients, with respect to every input, weight and output gradient."""
    args = layer_args(**case, device=device)
    tensors, with_tensors = needing_grad(args)

    def fn(*ts):
        output, hy, cy, cells, _ = torch.ops.fused_rnn.rnn_forward(*with_tensors(ts))
        return (output, hy) + ((cy,) if case["mode"] == "LSTM" else ()) + (
            (cells,) if case["cells"] else ())

    assert torch.autograd.gradgradcheck(fn, [args[i] for i in tensors], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_third_order_gradgradcheck(mode):
    """fp64 gradgradcheck of the layer op's gradients taken with create_graph=True: the third
    derivatives (the double backward's results have a graph of their own, RNNLayerDoubleBackward)
    against finite differences."""
    args = layer_args(mode)
    tensors, with_tensors = needing_grad(args)

    def gradients(*ts):
        output, hy, cy, _, _ = torch.ops.fused_rnn.rnn_forward(*with_tensors(ts))
        loss = output.sin().sum() + hy.square().sum() + (cy.square().sum() if cy.numel() else 0)
        return torch.autograd.grad(loss, ts, create_graph=True)

    assert torch.autograd.gradgradcheck(gradients, [args[i] for i in tensors], atol=1e-6,
                                        rtol=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_torch_func_grad_and_per_sample_gradients(mode):
    """torch.func.grad (create_graph inside) equals torch.nn's; vmap over it (per-sample
    gradients, on torch's loop fallback: fused_rnn has no batching rule) equals a loop over the
    samples, where torch.nn's RNNs raise under vmap at these sizes (torch 2.14.1)."""
    torch.manual_seed(0)
    nn, fused = make_pair(mode, 3, 4, num_layers=2, bidirectional=True)
    params = {k: v.detach() for k, v in fused.named_parameters()}
    xs = torch.randn(3, T, 1, 3, dtype=torch.float64)

    def loss(model):
        return lambda p, x: torch.func.functional_call(model, p, (x,))[0].pow(2).sum()

    want = torch.func.grad(loss(nn), argnums=(0, 1))(params, xs[0])
    got = torch.func.grad(loss(fused), argnums=(0, 1))(params, xs[0])
    torch.testing.assert_close(got, want, **TOL[torch.float64])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*batching rule.*")
        per_sample = torch.func.vmap(torch.func.grad(loss(fused)), in_dims=(None, 0))(params, xs)
    each = [torch.func.grad(loss(fused))(params, x) for x in xs]
    for name in params:
        loop = torch.stack([grads[name] for grads in each])
        torch.testing.assert_close(per_sample[name], loop, atol=1e-12, rtol=1e-10)


# The layer stack (fused_rnn::rnn, csrc/stack.cpp): layers, directions, batch_first, packed.
STACK_CASES = [
    dict(mode=m, layers=layers, bidirectional=bi, batch_first=bf, packed=packed, proj=proj,
         bias=bias, cells=cells)
    for m in MODES
    for layers in (1, 2)
    for bi in (False, True)
    for bf, packed in ((False, False), (True, False), (False, True))
    for proj in ([False, True] if m == "LSTM" else [False])
    for bias in (True, False)
    for cells in ([False, True] if m == "LSTM" and bias and not proj else [False])
]


def stack_id(c):
    return "-".join([c["mode"], f"L{c['layers']}"] + [k for k in (
        "bidirectional", "batch_first", "packed", "proj", "cells") if c[k]]
        + ([] if c["bias"] else ["nobias"]))


def stack_args(mode, layers, bidirectional, batch_first, packed, proj, bias, cells,
               dropout=0.0, training=False, device="cpu"):
    directions = 2 if bidirectional else 1
    state = P if proj else H
    g = _ops.gates_of(mode) * H

    def t(*shape):
        return torch.randn(*shape, dtype=torch.float64, device=device, requires_grad=True)

    weights = []
    for layer in range(layers):
        inp = I if layer == 0 else state * directions
        for _ in range(directions):
            weights += [t(g, inp), t(g, state)] + ([t(g), t(g)] if bias else [])
            weights += [t(P, H)] if proj else []
    batch_sizes = torch.tensor([3, 3, 2, 1, 1]) if packed else None
    x = t(int(batch_sizes.sum()), I) if packed else (t(B, T, I) if batch_first else t(T, B, I))
    hx = t(layers * directions, B, state)
    cx = t(layers * directions, B, H) if mode == "LSTM" else None
    return (mode, x, batch_sizes, hx, cx, weights, bias, layers, dropout, training,
            bidirectional, batch_first, proj, cells)


@pytest.mark.parametrize("case", STACK_CASES, ids=stack_id)
def test_stack_matches_layer_calls(case):
    """rnn equals its layers run by hand through rnn_forward: outputs, states and every
    gradient, bit for bit."""
    args = stack_args(**case)
    mode, x, batch_sizes, hx, cx, weights, bias, layers = args[:8]
    bidirectional, batch_first, proj, cells = args[10:]
    output, h_n, c_n, c_all = torch.ops.fused_rnn.rnn(*args)

    directions = 2 if bidirectional else 1
    per = 2 + (2 if bias else 0) + (1 if proj else 0)
    inp = x.transpose(0, 1) if batch_first else x
    hs, cs = [], []
    for layer in range(layers):
        outs, last_cells = [], []
        for d in range(directions):
            i = layer * directions + d
            w = weights[i * per:(i + 1) * per]
            out, hy, cy, c_t = _ops.rnn_layer(
                mode, inp, batch_sizes, hx[i], cx[i] if cx is not None else None, w[0], w[1],
                w[2] if bias else None, w[3] if bias else None, w[-1] if proj else None,
                reverse=d == 1, cell_states=cells and layer == layers - 1)
            outs.append(out)
            last_cells.append(c_t)
            hs.append(hy)
            cs.append(cy)
        inp = torch.cat(outs, -1)
    want = [inp.transpose(0, 1) if batch_first else inp, torch.stack(hs)]
    got = [output, h_n]
    if mode == "LSTM":
        want.append(torch.stack(cs))
        got.append(c_n)
    else:
        assert c_n.numel() == 0
    if cells:
        c_want = torch.cat(last_cells, -1)
        want.append(c_want.transpose(0, 1) if batch_first else c_want)
        got.append(c_all)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=0)
    leaves = [t for t in (x, hx, cx, *weights) if t is not None]
    seeds = [torch.randn_like(w) for w in want]
    grads_got = torch.autograd.grad(got, leaves, seeds)
    grads_want = torch.autograd.grad(want, leaves, seeds)
    for g, w in zip(grads_got, grads_want):
        torch.testing.assert_close(g, w, rtol=0, atol=0)


OPCHECK_STACK = [c for c in STACK_CASES if c["bias"] and not c["proj"] and not c["cells"] and (
    (c["layers"] == 2 and c["bidirectional"] and c["batch_first"])
    or (c["layers"] == 1 and not c["bidirectional"] and (c["packed"] or c["batch_first"])))]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", OPCHECK_STACK, ids=stack_id)
def test_opcheck_stack(case, device):
    torch.library.opcheck(torch.ops.fused_rnn.rnn.default, stack_args(**case, device=device))


def test_stack_dropout_and_bad_weights():
    """Dropout between layers (training only) draws like torch.nn's; a wrong weight count is a
    clear error."""
    args = list(stack_args("GRU", 3, False, False, False, False, True, False, 0.5, True))
    torch.manual_seed(1)
    a = torch.ops.fused_rnn.rnn(*args)[0]
    torch.manual_seed(1)
    b = torch.ops.fused_rnn.rnn(*args)[0]
    torch.manual_seed(2)
    c = torch.ops.fused_rnn.rnn(*args)[0]
    args[9] = False  # not training: no dropout, no draws
    d = torch.ops.fused_rnn.rnn(*args)[0]
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c) and not torch.equal(a, d)
    ref = torch.nn.GRU(I, H, num_layers=3, dropout=0.5, dtype=torch.float64)
    with torch.no_grad():
        for p, w in zip(ref._flat_weights, args[5]):
            p.copy_(w)
    torch.manual_seed(1)
    ref_out, _ = ref(args[1], args[3])
    torch.testing.assert_close(a, ref_out)
    args[5] = args[5][:-1]
    with pytest.raises(RuntimeError, match="need 12 weights, got 11"):
        torch.ops.fused_rnn.rnn(*args)


@pytest.mark.parametrize("layout", ["broadcast", "transposed", "strided"])
def test_backward_reads_any_output_gradient_layout(layout):
    """grad_output as sum() gives it (a broadcast), as a batch-first model's (transposed) or a
    slice's: the same gradients as from its contiguous copy."""
    args = layer_args("LSTM", cells=True, requires_grad=False)
    output, hy, cy, cells, workspace = torch.ops.fused_rnn.rnn_forward(*args)
    shape = output.shape
    grad = {"broadcast": torch.full((), 0.7, dtype=torch.float64).expand(shape),
            "transposed": torch.randn(shape[1], shape[0], shape[2],
                                      dtype=torch.float64).transpose(0, 1),
            "strided": torch.randn(*shape[:-1], 2 * shape[-1], dtype=torch.float64)[..., ::2]}
    grad = grad[layout]
    grad_cells = grad[..., :1].expand(cells.shape) if layout == "broadcast" else grad.flip(-1)
    rest = (torch.randn_like(hy), torch.randn_like(cy))
    got = torch.ops.fused_rnn.rnn_backward(*args[:11], workspace, grad, *rest, grad_cells)
    want = torch.ops.fused_rnn.rnn_backward(*args[:11], workspace, grad.contiguous(), *rest,
                                            grad_cells.contiguous())
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=0)


@pytest.mark.parametrize("which", ["grad_output", "grad_hy", "grad_cy", "grad_cell_states"])
def test_backward_checks_gradient_shapes(which):
    args = layer_args("LSTM", cells=True, requires_grad=False)
    output, hy, cy, cells, workspace = torch.ops.fused_rnn.rnn_forward(*args)
    grads = dict(grad_output=torch.randn_like(output), grad_hy=torch.randn_like(hy),
                 grad_cy=torch.randn_like(cy), grad_cell_states=torch.randn_like(cells))
    grads[which] = grads[which][..., :-1]
    with pytest.raises(RuntimeError, match=f"{which} must be"):
        torch.ops.fused_rnn.rnn_backward(*args[:11], workspace, *grads.values())


# input_batch_first: the small layers' products after the loop, and a layer whose weight and
# input gradients are summed inside the backward loop (CPU: N * gates > 256K, I <= 32).
BATCH_FIRST_SIZES = {"small": (T, B, I, H), "in_loop": (64, 64, 16, 32)}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("size", list(BATCH_FIRST_SIZES))
@pytest.mark.parametrize("mode", MODES)
def test_input_batch_first(mode, size, device):
    """input_batch_first=True on a [B, T, I] input: exactly the results of its time-major view,
    and the input's gradient [B, T, I], contiguous (no transposed copy left for autograd), with
    and without training's input gradient."""
    steps, batch, inputs, hidden = BATCH_FIRST_SIZES[size]
    g = _ops.gates_of(mode) * hidden
    torch.manual_seed(0)

    def t(*shape):
        return torch.randn(*shape, dtype=torch.float64, device=device)

    x = t(batch, steps, inputs)
    rest = (t(batch, hidden), t(batch, hidden) if mode == "LSTM" else None, t(g, inputs) / 4,
            t(g, hidden) / 4, t(g), t(g), None, False, True, False)
    want = torch.ops.fused_rnn.rnn_forward(mode, x.transpose(0, 1), None, *rest)
    got = torch.ops.fused_rnn.rnn_forward(mode, x, None, *rest, input_batch_first=True)
    for a, b in zip(want, got, strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
    output, hy, cy = want[:3]
    grads = (torch.randn_like(output), torch.randn_like(hy),
             torch.randn_like(cy) if mode == "LSTM" else None, None)
    for input_grad in (True, False):
        want_g = torch.ops.fused_rnn.rnn_backward(mode, x.transpose(0, 1), None, *rest[:7],
                                                  False, want[4], *grads, input_grad=input_grad)
        got_g = torch.ops.fused_rnn.rnn_backward(mode, x, None, *rest[:7], False, got[4], *grads,
                                                 input_grad=input_grad, input_batch_first=True)
        assert got_g[0].shape == x.shape and got_g[0].is_contiguous()
        torch.testing.assert_close(got_g[0], want_g[0].transpose(0, 1), rtol=0, atol=0)
        for a, b in zip(want_g[1:], got_g[1:], strict=True):
            torch.testing.assert_close(b, a, rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES)
def test_input_batch_first_opcheck_and_gradcheck(mode, device):
    """The flag through the fake kernels (the time-major output's shape, the batch-first input
    gradient's), autograd and gradcheck in fp64."""
    args = list(layer_args(mode, device=device))
    args[1] = args[1].detach().transpose(0, 1).contiguous().requires_grad_()  # [B, T, I]
    kwargs = dict(input_batch_first=True)
    torch.library.opcheck(torch.ops.fused_rnn.rnn_forward.default, tuple(args), kwargs)
    plain = [a.detach() if torch.is_tensor(a) else a for a in args]
    output, hy, cy, cells, workspace = torch.ops.fused_rnn.rnn_forward(*plain, **kwargs)
    assert output.shape == (T, B, H)
    bw_args = (*plain[:11], workspace, torch.randn_like(output), torch.randn_like(hy),
               torch.randn_like(cy) if mode == "LSTM" else None, None)
    torch.library.opcheck(torch.ops.fused_rnn.rnn_backward.default, bw_args, kwargs)
    positions, with_tensors = needing_grad(args)

    def fn(*ts):
        output, hy, cy, _, _ = torch.ops.fused_rnn.rnn_forward(*with_tensors(ts), **kwargs)
        return (output, hy, cy) if mode == "LSTM" else (output, hy)

    assert torch.autograd.gradcheck(fn, [args[i] for i in positions], eps=1e-6, atol=1e-5,
                                    rtol=1e-4)


@pytest.mark.parametrize("packed", [True, False])
def test_input_batch_first_needs_padded_3d_input(packed):
    args = list(layer_args("GRU", packed=packed, requires_grad=False))
    if not packed:
        args[1] = args[1][0]  # 2-D
    with pytest.raises(RuntimeError, match="input_batch_first is for padded input"):
        torch.ops.fused_rnn.rnn_forward(*args, input_batch_first=True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES)
def test_rnn_lengths_op(mode, device):
    """fused_rnn::rnn_lengths (lengths= under torch.compile): opcheck, and fp64 gradcheck of its
    backward (the forward run again under autograd) through every output."""
    torch.manual_seed(0)
    torch.set_default_device(device)
    try:
        check_rnn_lengths_op(mode)
    finally:
        torch.set_default_device("cpu")


def check_rnn_lengths_op(mode):
    lstm = mode == "LSTM"
    weights = []
    for index in range(4):  # 2 layers x 2 directions
        weights += [torch.randn(_ops.gates_of(mode) * 4, n, dtype=torch.float64, requires_grad=True)
                    for n in (3 if index < 2 else 8, 4)]
        weights += [torch.randn(_ops.gates_of(mode) * 4, dtype=torch.float64, requires_grad=True)
                    for _ in range(2)]
    x = torch.randn(5, 3, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(4, 3, 4, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(4, 3, 4, dtype=torch.float64, requires_grad=True) if lstm else None
    lengths = torch.tensor([2, 5, 3], device="cpu")
    flags = (True, 2, 0.0, True, True, False, False, lstm)  # bias .. cell_states

    def op(x, h0, c0, *w):
        return torch.ops.fused_rnn.rnn_lengths(mode, x, lengths, h0, c0, list(w), *flags)

    torch.library.opcheck(torch.ops.fused_rnn.rnn_lengths.default,
                          (mode, x, lengths, h0, c0, weights, *flags))
    inputs = (x, h0, c0, *weights)

    def outputs(*args):
        out = op(*args)
        return out[:4] if lstm else out[:2]

    assert torch.autograd.gradcheck(outputs, inputs)
