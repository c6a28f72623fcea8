"""fused_rnn vs torch.nn in every configuration: outputs, final states, every gradient."""

import copy
import itertools
import os

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

from conftest import (DEVICES, MODES, TOL, assert_low_precision_close, assert_same_inference,
                      assert_same_run, flatten, layout_pair, make_pair, num_threads,
                      relative_error, run_and_grad)

I, H, P, T, B = 5, 6, 3, 7, 4

CONFIGS = [
    # mode, proj_size
    *[(m, 0) for m in MODES],
    ("LSTM", P),
]
INPUTS = ["padded", "unbatched", "packed_sorted", "packed_unsorted"]


def _state_shapes(mode, layers, dirs, batch, proj, hidden=H):
    state = proj or hidden
    if mode == "LSTM":
        return [(layers * dirs, *batch, state), (layers * dirs, *batch, hidden)]
    return [(layers * dirs, *batch, state)]


def _run_case(mode, proj, bias, batch_first, bidirectional, layers, kind, hx_given, dtype,
              device="cpu"):
    ref, fused = make_pair(mode, I, H, num_layers=layers, bias=bias, batch_first=batch_first,
                           bidirectional=bidirectional, device=device, dtype=dtype,
                           **({"proj_size": proj} if proj else {}))
    dirs = 2 if bidirectional else 1
    opts = dict(dtype=dtype, device=device)
    leaves = []
    if kind == "unbatched":
        x = torch.randn(T, I, **opts, requires_grad=True)
        batch = ()
    else:
        shape = (B, T, I) if batch_first else (T, B, I)
        x = torch.randn(*shape, **opts, requires_grad=True)
        batch = (B,)
    leaves.append(x)
    hx = None
    if hx_given:
        hs = [torch.randn(*s, **opts, requires_grad=True)
              for s in _state_shapes(mode, layers, dirs, batch, proj)]
        leaves += hs
        hx = tuple(hs) if mode == "LSTM" else hs[0]
    if kind.startswith("packed"):
        lengths = [T, 5, 5, 1] if kind == "packed_sorted" else [3, T, 1, 5]
        sort = kind == "packed_sorted"

        def call(m):
            packed = pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=sort)
            return m(packed) if hx is None else m(packed, hx)
    else:
        def call(m):
            return m(x) if hx is None else m(x, hx)
    assert_same_run(ref, fused, call, leaves, dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("kind", INPUTS)
@pytest.mark.parametrize("mode,proj", CONFIGS, ids=lambda v: str(v))
@pytest.mark.parametrize(
    "bias,batch_first,bidirectional,layers,hx_given",
    list(itertools.product([True, False], [False, True], [False, True], [1, 2], [False, True])),
    ids=lambda v: str(int(v)) if isinstance(v, (bool, int)) else str(v))
def test_parity(mode, proj, bias, batch_first, bidirectional, layers, kind, hx_given, dtype):
    _run_case(mode, proj, bias, batch_first, bidirectional, layers, kind, hx_given, dtype)


@pytest.mark.skipif("cuda" not in DEVICES, reason="no CUDA device")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("kind", INPUTS)
@pytest.mark.parametrize("mode,proj", CONFIGS, ids=lambda v: str(v))
@pytest.mark.parametrize("bidirectional,layers", [(False, 1), (True, 2)])
def test_parity_cuda(mode, proj, bidirectional, layers, kind, dtype, cuda_loop):
    _run_case(mode, proj, True, False, bidirectional, layers, kind, True, dtype, device="cuda")


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("size", [(1, 1, 1, 1), (1, 3, 2, 1), (40, 2, 3, 9), (3, 1, 70, 33)],
                         ids=lambda s: "T{}B{}I{}H{}".format(*s))
def test_shapes(mode, size):
    """Edge sizes: T=1, B=1, H=1, long sequences, wide inputs, hidden sizes not a multiple of 8."""
    t, b, i, h = size
    ref, fused = make_pair(mode, i, h)
    x = torch.randn(t, b, i, dtype=torch.float64, requires_grad=True)
    assert_same_run(ref, fused, lambda m: m(x), [x])


@pytest.mark.parametrize("mode", list(MODES))
def test_empty_batch(mode):
    ref, fused = make_pair(mode, I, H)
    x = torch.randn(T, 0, I, dtype=torch.float64)
    out_ref, out_fused = ref(x), fused(x)
    assert out_fused[0].shape == out_ref[0].shape
    for a, b in zip(out_ref[1] if mode == "LSTM" else [out_ref[1]],
                    out_fused[1] if mode == "LSTM" else [out_fused[1]]):
        assert a.shape == b.shape
    # and through backward (no rows: zero weight gradients, no division by the row count)
    x.requires_grad_()
    assert_same_run(ref, fused, lambda m: m(x), [x])


@pytest.mark.parametrize("mode", list(MODES))
def test_noncontiguous_and_expanded(mode):
    """Transposed input, expanded input and hx, a strided slice: same as torch.nn."""
    ref, fused = make_pair(mode, I, H)
    base = torch.randn(B, T, I, dtype=torch.float64, requires_grad=True)
    x = base.transpose(0, 1)  # [T, B, I], not contiguous
    h_base = torch.randn(1, 1, H, dtype=torch.float64, requires_grad=True)

    def call(m):
        h0 = h_base.expand(1, B, H)
        return m(x, (h0, h0 * 2) if mode == "LSTM" else h0)

    assert_same_run(ref, fused, call, [base, h_base])
    wide = torch.randn(T, B, 2 * I, dtype=torch.float64, requires_grad=True)
    assert_same_run(ref, fused, lambda m: m(wide[:, :, ::2]), [wide])
    one = torch.randn(1, 1, I, dtype=torch.float64, requires_grad=True)
    assert_same_run(ref, fused, lambda m: m(one.expand(T, B, I)), [one])


@pytest.mark.parametrize("mode", list(MODES))
def test_eval_and_no_grad(mode):
    """Inference paths (no workspace) give the training path's values."""
    ref, fused = make_pair(mode, I, H, num_layers=2, bidirectional=True)
    x = torch.randn(T, B, I, dtype=torch.float64)
    with torch.no_grad():
        for a, b in zip(ref(x)[0:1], fused(x)[0:1]):
            torch.testing.assert_close(b, a, atol=1e-8, rtol=1e-7)
    with torch.inference_mode():
        torch.testing.assert_close(fused(x)[0], ref(x)[0], atol=1e-8, rtol=1e-7)


@pytest.mark.parametrize("x_grad", [True, False])
@pytest.mark.parametrize("kind", ["padded", "batch_first", "packed"])
@pytest.mark.parametrize("mode,proj", CONFIGS)
def test_double_backward_like_torch(mode, proj, kind, x_grad):
    """A gradient penalty through a 2-layer bidirectional model (create_graph=True, then the
    gradients' own gradients) equals torch.nn's, with and without an input that needs a
    gradient (then the layer op skips dx, and its double backward too)."""
    ref, fused = make_pair(mode, I, H, num_layers=2, bidirectional=True,
                           batch_first=kind == "batch_first",
                           **({"proj_size": proj} if proj else {}))
    x = torch.randn(B, T, I, dtype=torch.float64)  # time-major: T = B rows, B = T steps
    results = []
    for model in (ref, fused):
        leaf = x.clone().requires_grad_(x_grad)
        inp = leaf
        if kind == "packed":
            inp = pack_padded_sequence(leaf, [3, 1, 4, 2, 4, 1, 2], enforce_sorted=False)
        tensors = flatten(model(inp))
        loss = tensors[0].sin().sum() + sum(t.pow(2).sum() for t in tensors[1:])
        wrt = ([leaf] if x_grad else []) + list(model.parameters())
        grads = torch.autograd.grad(loss, wrt, create_graph=True)
        penalty = sum(g.pow(2).sum() for g in grads)
        results.append(torch.autograd.grad(penalty, wrt))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(b, a, **TOL[torch.float64])


@pytest.mark.parametrize("kind", ["padded", "batch_first", "packed", "hx"])
@pytest.mark.parametrize("mode,proj", CONFIGS)
def test_third_and_fourth_order_like_torch(mode, proj, kind):
    """Derivatives of order 3 and 4 through a 2-layer bidirectional model (a gradient penalty's
    gradients differentiated twice more) equal torch.nn's: with and without given (h0, c0) that
    need gradients too."""
    ref, fused = make_pair(mode, I, H, num_layers=2, bidirectional=True,
                           batch_first=kind == "batch_first",
                           **({"proj_size": proj} if proj else {}))
    x = torch.randn(B, T, I, dtype=torch.float64)  # time-major: T = B rows, B = T steps
    states = [torch.randn(4, T, proj or H, dtype=torch.float64),
              torch.randn(4, T, H, dtype=torch.float64)][:2 if mode == "LSTM" else 1]
    results = []
    for model in (ref, fused):
        leaf = x.clone().requires_grad_()
        inp = leaf
        if kind == "packed":
            inp = pack_padded_sequence(leaf, [3, 1, 4, 2, 4, 1, 2], enforce_sorted=False)
        wrt = [leaf] + list(model.parameters())
        hx = ()
        if kind == "hx":
            given = [s.clone().requires_grad_() for s in states]
            wrt += given
            hx = (tuple(given) if mode == "LSTM" else given[0],)
        tensors = flatten(model(inp, *hx))
        loss = tensors[0].sin().sum() + sum(t.pow(2).sum() for t in tensors[1:])
        grads = torch.autograd.grad(loss, wrt, create_graph=True)
        orders = []
        for _ in range(3):  # orders 2, 3 and 4
            grads = torch.autograd.grad(sum(g.pow(2).sum() for g in grads if g is not None), wrt,
                                        create_graph=True, allow_unused=True)
            orders += grads
        results.append(orders)
    for a, b in zip(*results, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(b, a, **TOL[torch.float64])


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode,proj", CONFIGS)
def test_low_precision_cpu(mode, proj, dtype, packed):
    """fp16/bf16 modules on the CPU, as torch.nn runs them there: fp32 math on rounded storage
    (the CUDA kernels' contract, tests/test_cuda.py), within 1e-2 of an fp32 run."""
    assert_low_precision_close(mode, dtype, "cpu", packed=packed,
                               **({"proj_size": proj} if proj else {}))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_cpu_training_and_inference(dtype):
    """A bf16/fp16 model trains and infers like its torch.nn twin: the same loss trajectory
    (each within 1e-2 of the fp32 model's), inference without a workspace, eval dropout off."""
    ref, fused = make_pair("LSTM", I, H, num_layers=2, dropout=0.0, dtype=dtype)
    x = torch.randn(T, B, I, dtype=dtype)
    with torch.no_grad():
        torch.testing.assert_close(fused(x)[0].float(), ref(x)[0].float(), atol=2e-2, rtol=2e-2)
    with torch.inference_mode():
        assert fused(x)[0].dtype == dtype
    losses = []
    for model in (ref, fused):
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        trace = []
        for _ in range(3):
            opt.zero_grad()
            loss = model(x)[0].float().pow(2).mean()
            loss.backward()
            opt.step()
            trace.append(loss.item())
        losses.append(trace)
    torch.testing.assert_close(torch.tensor(losses[1]), torch.tensor(losses[0]), atol=1e-2,
                               rtol=2e-2)


@pytest.mark.parametrize("mode", list(MODES))
def test_dropout_matches_torch_with_same_seed(mode):
    """Dropout between layers draws the same masks as torch.nn's under the same seed."""
    ref, fused = make_pair(mode, I, H, num_layers=3, dropout=0.4, bidirectional=True)
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    for train in (True, False):
        ref.train(train)
        fused.train(train)

        def call(m):
            torch.manual_seed(7)
            return m(x)

        assert_same_run(ref, fused, call, [x])


@pytest.mark.parametrize("p", [0.0, 1.0])
def test_dropout_edges(p):
    ref, fused = make_pair("LSTM", I, H, num_layers=2, dropout=p)
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)

    def call(m):
        torch.manual_seed(3)
        return m(x)

    assert_same_run(ref, fused, call, [x])


def test_training_steps_match():
    """Several optimiser steps on the same batches: the parameters stay equal."""
    ref, fused = make_pair("LSTM", I, H, num_layers=2, batch_first=True)
    opt_ref = torch.optim.Adam(ref.parameters(), lr=1e-2)
    opt_fus = torch.optim.Adam(fused.parameters(), lr=1e-2)
    for _ in range(5):
        x = torch.randn(B, T, I, dtype=torch.float64)
        for m, opt in ((ref, opt_ref), (fused, opt_fus)):
            opt.zero_grad()
            out, (h, c) = m(x)
            (out.square().mean() + h.sum()).backward()
            opt.step()
    for (name, a), b in zip(ref.named_parameters(), fused.parameters()):
        torch.testing.assert_close(b, a, atol=1e-8, rtol=1e-7, msg=name)


# Hidden sizes at which the CPU shares each step's units out across threads (W_hh >= 256 KB,
# >= 32 units per thread, batch < 8: fewer than 4 rows per thread; csrc/cpu/backend.h: plan), H
# not a multiple of the 16-unit alignment.
UNIT_SPLIT_H = {"LSTM": 130, "GRU": 160, "RNN_TANH": 260, "RNN_RELU": 260}
# The CPUs this process may run on.
CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("kind", ["padded", "packed_bidirectional", "inference"])
@pytest.mark.parametrize("team", ["two", "more_than_cpus"])
def test_units_shared_across_threads(mode, kind, team):
    """Two threads, each computing a slice of every step's units and meeting once per step:
    the same values and gradients as torch.nn, padded, packed (rows stop at different steps) and
    without autograd (double-buffered previous state). With more torch threads than CPUs the
    CPU path takes row parts instead, at most one per CPU (plan): the same results."""
    with num_threads(2 if team == "two" else CPUS + 2):
        h = UNIT_SPLIT_H[mode]
        ref, fused = make_pair(mode, 5, h, bidirectional=kind == "packed_bidirectional")
        x = torch.randn(6, 5, 5, dtype=torch.float64, requires_grad=kind != "inference")
        if kind == "packed_bidirectional":
            def call(m):
                return m(pack_padded_sequence(x, [6, 4, 4, 2, 1]))
        else:
            def call(m):
                return m(x)
        if kind == "inference":
            assert_same_inference(ref, fused, call)
        else:
            assert_same_run(ref, fused, call, [x])


# Products over fewer than 64 rows in all read their weight in place instead of packing it
# (csrc/cpu/backend.h: read_in_place): the forward's W_ih^T and W_hh^T as torch stores them
# (dot_gemm), the backward's row-major W_ih and W_hh from 1 MB on (kRowMajorInPlaceMinBytes,
# the BLAS); from 64 rows on, packed copies (row-major ones in blocks of eight rows), except
# that AVX-512 builds read a transposed view summing K >= 256 terms in several products (W_hh^T
# by every step) in place up to 127 rows (kDotLongK). Both sides of both boundaries; one step
# of one row with the state given (a decoder's call: unit parts on two threads). "forward":
# UNIT_SPLIT_H units, an input width that leaves a partial lane (37) and column counts that
# are not multiples of three (dot_gemm's blocks on AVX2; test_in_place_blocks has AVX-512's);
# "backward": I = H with W_hh and W_ih of 1 MB in fp32 (the GRU's recurrent weight rolled to
# n, r, z first).
IN_PLACE_H = {"forward": UNIT_SPLIT_H,
              "backward": {"LSTM": 256, "GRU": 300, "RNN_TANH": 512, "RNN_RELU": 512}}


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("weights", list(IN_PLACE_H))
@pytest.mark.parametrize("steps,batch", [(1, 1), (3, 2), (1, 8), (7, 9), (1, 63), (1, 64),
                                         (2, 32), (3, 42), (4, 32)],
                         ids=["decoder_step", "two_rows", "one_step", "63_rows",
                              "63_rows_one_step", "64_rows", "64_rows_two_steps",
                              "126_rows_three_steps", "128_rows_four_steps"])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_weights_read_in_place(mode, weights, steps, batch, threads, dtype):
    with num_threads(threads):
        h = IN_PLACE_H[weights][mode]
        inputs = 37 if weights == "forward" else h
        ref, fused = make_pair(mode, inputs, h, dtype=dtype)
        x = torch.randn(steps, batch, inputs, dtype=dtype, requires_grad=True)
        hs = [torch.randn(1, batch, h, dtype=dtype, requires_grad=True)
              for _ in range(2 if mode == "LSTM" else 1)]
        hx = tuple(hs) if mode == "LSTM" else hs[0]
        assert_same_run(ref, fused, lambda m: m(x, hx), [x, *hs], dtype)
        assert_same_inference(ref, fused, lambda m: m(x, hx), **TOL[dtype])


# dot_gemm's passes (csrc/cpu/backend.h: kDotRows x kDotCols, 6 x 4 on AVX-512, 4 x 3 on AVX2)
# and the last rows and columns of each product left over from them, every count of both on
# either build: 3-11 rows (x W_ih^T and h W_hh^T of one step), column counts G = 4H, 3H or H
# from H 125-127 (each of them 1-3 past a multiple of 4 and of 3 in some mode; the weights
# past pack_weight's 16 KB, so read in place, not copied row-major). One thread: each product
# takes all of its columns at once.
@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN_TANH"])
@pytest.mark.parametrize("batch", [3, 4, 5, 6, 7, 11])
@pytest.mark.parametrize("hidden", [125, 126, 127])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_in_place_blocks(mode, batch, hidden, dtype):
    with num_threads(1):
        ref, fused = make_pair(mode, 37, hidden, dtype=dtype)
        x = torch.randn(1, batch, 37, dtype=dtype, requires_grad=True)
        hs = [torch.randn(1, batch, hidden, dtype=dtype, requires_grad=True)
              for _ in range(2 if mode == "LSTM" else 1)]
        hx = tuple(hs) if mode == "LSTM" else hs[0]
        assert_same_run(ref, fused, lambda m: m(x, hx), [x, *hs], dtype)
        assert_same_inference(ref, fused, lambda m: m(x, hx), **TOL[dtype])


@pytest.mark.parametrize("steps,batch", [(1, 100), (2, 100), (3, 50)],
                         ids=["few_rows", "wide_products", "packed"])
def test_large_weight_in_place(steps, batch):
    """12 MB weights (kDotLargeWeightBytes, csrc/cpu/backend.h: read_in_place), GRU's rolled W_hh
    among them: under 128 rows in all read in place both ways; 200 rows in products of 100, the
    backward's row-major ones in place, the forward's packed; 150 rows in products of 50, all
    packed."""
    ref, fused = make_pair("GRU", 1024, 1024, dtype=torch.float32)
    x = torch.randn(steps, batch, 1024, requires_grad=True)
    h0 = torch.randn(1, batch, 1024, requires_grad=True)
    assert_same_run(ref, fused, lambda m: m(x, h0), [x, h0], torch.float32)


# Processing step 0's recurrent products are left out where h0 is zeros (csrc/sequence.h:
# first_state_zero; on the CPU from 8 rows forward, a state of 8 units backward: hence 12 rows,
# H 10, P 9 here): hx=None or zeros given (then also dh_0), against a random hx; one step (no
# recurrent product at all) and three; the reverse direction of a packed batch starts 9 of its
# 12 rows at its step 0 (T - 1), the others later from h0.
ZERO_STATE_H, ZERO_STATE_CONFIGS = 10, [(m, 0) for m in MODES] + [("LSTM", 9)]


@pytest.mark.parametrize("hx", ["none", "zeros", "random"])
@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("layout", ["padded", "packed_bidirectional", "batch_first"])
@pytest.mark.parametrize("mode,proj", ZERO_STATE_CONFIGS, ids=lambda v: str(v))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_zero_initial_state(mode, proj, layout, steps, hx, dtype):
    batch, bidirectional = 12, layout == "packed_bidirectional"
    ref, fused = make_pair(mode, I, ZERO_STATE_H, num_layers=2, bidirectional=bidirectional,
                           batch_first=layout == "batch_first", dtype=dtype,
                           **({"proj_size": proj} if proj else {}))
    dims = (batch, steps, I) if layout == "batch_first" else (steps, batch, I)
    x = torch.randn(*dims, dtype=dtype, requires_grad=True)
    lengths = [steps] * 9 + [max(1, steps - 1)] * 3
    leaves, state = [x], None
    if hx != "none":
        make = torch.zeros if hx == "zeros" else torch.randn
        hs = [make(*s, dtype=dtype).requires_grad_()
              for s in _state_shapes(mode, 2, 2 if bidirectional else 1, (batch,), proj,
                                     ZERO_STATE_H)]
        leaves += hs
        state = tuple(hs) if mode == "LSTM" else hs[0]

    def call(m):
        inp = x
        if layout == "packed_bidirectional":
            inp = pack_padded_sequence(x, lengths, enforce_sorted=False)
        return m(inp) if state is None else m(inp, state)

    assert_same_run(ref, fused, call, leaves, dtype)


# 0 * inf is NaN: with an infinite element in W_hh, or in the gate gradients of the first step,
# torch.nn's product with the zero h0 puts NaNs in the output (dW_hh); fused_rnn does not leave
# that product out then, and has the same NaNs. H 256: W_hh of 256 KB-1 MB, whose scan the
# threads share (csrc/cpu/backend.h: kParallelScanBytes), the infinity in the last rows.
@pytest.mark.parametrize("where", ["w_hh", "first_step_grad"])
@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("hidden", [ZERO_STATE_H, 256])
def test_zero_initial_state_keeps_nans(mode, steps, where, hidden):
    ref, fused = make_pair(mode, I, hidden, dtype=torch.float32)
    if where == "w_hh":
        with torch.no_grad():
            for m in (ref, fused):
                m.weight_hh_l0[-2, 5] = float("inf")
    x = torch.randn(steps, 12, I)
    grad_out = torch.randn(steps, 12, hidden)
    if where == "first_step_grad":
        grad_out[0, 3] = float("inf")
    results = []
    for m in (ref, fused):
        with num_threads(2):
            out = m(x)[0]
            out.backward(grad_out)
        results.append([out] + [p.grad for p in m.parameters()])
    meant = results[0][0] if where == "w_hh" else ref.weight_hh_l0.grad
    assert meant.isnan().any()  # the case is the one meant
    for a, b in zip(*results, strict=True):
        assert torch.equal(b.isnan(), a.isnan())
        keep = ~a.isnan()
        torch.testing.assert_close(b[keep], a[keep], **TOL[torch.float32])


# The post-loop weight gradients on the CPU's small-product kernel (csrc/cpu/backend.h:
# grad_weight) take each run of input rows in chunks of 256: runs of 660 rows (time-major, one
# run), of 300 (batch-first: a run per step) and packed ones, with a last partial chunk; dW in
# both orientations (3 inputs: dW^T, its lanes along the gates; 64: dW itself).
@pytest.mark.parametrize("mode", ["LSTM", "RNN_TANH"])
@pytest.mark.parametrize("inputs", [3, 64])
@pytest.mark.parametrize("layout", ["time_major", "batch_first", "packed"])
def test_weight_gradients_over_row_chunks(mode, inputs, layout):
    steps, batch = (2, 300) if layout == "batch_first" else (20, 33)
    ref, fused = make_pair(mode, inputs, 4, batch_first=layout == "batch_first")
    dims = (batch, steps, inputs) if layout == "batch_first" else (steps, batch, inputs)
    x = torch.randn(*dims, dtype=torch.float64, requires_grad=True)
    lengths = torch.randint(1, steps + 1, (batch,))
    lengths[0] = steps

    def call(m):
        if layout != "packed":
            return m(x)
        return m(pack_padded_sequence(x, lengths, enforce_sorted=False))

    assert_same_run(ref, fused, call, [x])


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN_TANH"])
@pytest.mark.parametrize("steps,batch", [(3, 50), (20, 8)], ids=["packed", "many_steps"])
def test_fp32_long_sums(mode, steps, batch):
    """Products whose sums run over 1024-3072 terms (H = 1024; GRU's backward sums 3H): in fp32
    fused_rnn's largest error against the fp64 oracle, in units of DESIGN.md's fp32 tolerance,
    stays within twice torch.nn fp32's own. (The CPU's kernels summed each product's k terms
    in one chain; GRU's weight gradients came out 3-4x torch's error, past the tolerance.)"""
    ref, fused = make_pair(mode, 1024, 1024, dtype=torch.float32)
    ref64 = copy.deepcopy(ref).double()
    x = torch.randn(steps, batch, 1024)
    with torch.no_grad():
        weights = [torch.randn_like(t) for t in flatten(ref(x))]
    tol = TOL[torch.float32]

    def run(module, dtype):
        leaf = x.to(dtype).requires_grad_()
        tensors, grads = run_and_grad(module, lambda m: m(leaf), [leaf],
                                      [w.to(dtype) for w in weights])
        return [t.double() for t in [*tensors, *grads]]

    def error(results, oracle):  # the largest |difference| / (atol + rtol |oracle|)
        return max(((r - o).abs() / (tol["atol"] + tol["rtol"] * o.abs())).max().item()
                   for r, o in zip(results, oracle, strict=True))

    oracle = run(ref64, torch.float64)
    assert error(run(fused, torch.float32), oracle) <= 2 * error(run(ref, torch.float32), oracle)


# Hidden sizes whose last lane (8 floats / 4 doubles on AVX2) is at most half full: the CPU runs
# those columns two rows per lane (csrc/cpu/backend.h: PairVec), with the odd row alone.
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("hidden", [1, 3, 4, 6, 8, 12, 18])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_small_hidden_row_pairs(mode, hidden, dtype):
    """Odd and even active row counts per step (packed, unsorted, both directions), h0/c0 given,
    against torch.nn: outputs, states and every gradient."""
    ref, fused = make_pair(mode, 3, hidden, bidirectional=True, dtype=dtype)
    lengths = [4, 9, 1, 6, 9, 3, 2]
    x = torch.randn(9, len(lengths), 3, dtype=dtype, requires_grad=True)
    hs = [torch.randn(s, dtype=dtype, requires_grad=True)
          for s in _state_shapes_for(mode, 2, len(lengths), hidden)]
    hx = tuple(hs) if mode == "LSTM" else hs[0]

    def call(m):
        return m(pack_padded_sequence(x, lengths, enforce_sorted=False), hx)

    assert_same_run(ref, fused, call, [x, *hs], dtype)


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN_TANH"])
@pytest.mark.parametrize("hidden", [3, 16, 21], ids=["row_pairs", "lanes", "lanes_and_tail"])
def test_fp32_gate_math_accuracy(mode, hidden):
    """The fp32 sigmoid and tanh (csrc/cpu/backend.h: exp's polynomial, a reciprocal estimate
    refined once) stay within a few ulp of exact over [-48, 48] and at +-inf and NaN: one step
    from zero states with W_hh = 0 and power-of-two weights, so that the pre-activations are exact
    in fp32 and only the gate math differs from torch.nn in fp64. Errors seen: 2.0e-7 (the
    division and exp_u20 before: 1.8e-7); exp's polynomial without its highest term gives 3e-5,
    which the layer tolerance (2e-5 + 1e-4 relative) lets through, the reciprocal estimate
    without its Newton step 3e-4."""
    ref, fused = make_pair(mode, 1, hidden, dtype=torch.float64)
    with torch.no_grad():
        for m in (ref, fused):
            m.weight_hh_l0.zero_()
            m.bias_ih_l0.zero_()
            m.bias_hh_l0.zero_()
            rows = m.weight_ih_l0.shape[0]
            m.weight_ih_l0.copy_((2.0 ** (torch.arange(rows) % 5 - 2)).unsqueeze(1))
    x = torch.linspace(-12, 12, 4093, dtype=torch.float32)  # times up to 4: [-48, 48]
    x = torch.cat([x, torch.tensor([float("inf"), -float("inf"), float("nan"), 0.0])])
    x = x.view(1, -1, 1)
    expected = flatten(ref(x.double()))
    got = flatten(fused.float()(x))
    for e, g in zip(expected, got, strict=True):
        assert torch.equal(torch.isnan(e), torch.isnan(g))
        torch.testing.assert_close(g.double(), e, atol=5e-7, rtol=0, equal_nan=True)


def _state_shapes_for(mode, dirs, batch, hidden):
    return [(dirs, batch, hidden)] * (2 if mode == "LSTM" else 1)


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
@pytest.mark.parametrize("hidden", [4, 300], ids=["small", "large"])
def test_batch_first_input(mode, hidden):
    """A batch-first input is read in place (a time-major view of it) by the products on an
    unpacked small weight and on a packed one: both equal to torch.nn."""
    ref, fused = make_pair(mode, 3, hidden, batch_first=True, dtype=torch.float32)
    x = torch.randn(7, 30, 3, requires_grad=True)
    assert_same_run(ref, fused, lambda m: m(x), [x], torch.float32)


@pytest.mark.parametrize("mode,hidden,batch", [("LSTM", 512, 160), ("GRU", 512, 160),
                                               ("LSTM", 832, 80)])
@pytest.mark.parametrize("threads", [1, 2])
def test_large_batch_row_blocks(mode, hidden, batch, threads):
    """More rows per step than one block of the CPU's packed-weight products (64K / H rows, a
    large W_hh): the rows go in blocks, forward and backward, on one thread, in two row parts
    (H = 512) and with units split across two (H = 832: 40 rows per thread is fewer than one per
    256 KB of its 11 MB W_hh)."""
    with num_threads(threads):
        ref, fused = make_pair(mode, 8, hidden)
        x = torch.randn(3, batch, 8, dtype=torch.float64, requires_grad=True)
        assert_same_run(ref, fused, lambda m: m(x), [x])


# A recurrent weight above 1 MB (csrc/cpu/backend.h: kL2ResidentBytes; fp64 here) is taken
# last column strip to first on every other step, forward and backward (sequence.h:
# in_step_order), and each strip's product runs once the next strip, fetched ahead, is known
# (gemm_weight): row parts (24 rows) and unit parts (4 rows, gate blocks in reverse too) on two
# threads, one part on one; H 376 leaves a partial strip at the end of every gate block; 40 steps,
# so that the weights are packed (read in place below 64 rows in all, and on AVX-512 a W_hh^T of
# K >= 256 below 128: kDotLongK).
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("batch", [24, 4], ids=["row_parts", "unit_parts"])
@pytest.mark.parametrize("threads", [1, 2])
def test_descending_steps(mode, batch, threads):
    with num_threads(threads):
        ref, fused = make_pair(mode, 40, 376)
        x = torch.randn(40, batch, 40, dtype=torch.float64, requires_grad=True)
        assert_same_run(ref, fused, lambda m: m(x), [x])
        assert_same_inference(ref, fused, lambda m: m(x), **TOL[torch.float64])


# Packed weights of 1 MB and more (csrc/cpu/backend.h: kStripSplitMinBytes) multiply all rows
# by column strips shared out across threads, however many rows: the forward's x W_ih^T and
# the backward's dgates W_ih, fp64, 1.06-1.18 MB, over 264-288 rows (two of the packed
# kernel's row blocks), with a partial last strip (G of 270, 288 and 260 columns in strips of
# 16) and, backward, 32 strips of I = 512. Padded, batch-first and packed in both directions.
LARGE_STRIPS_H = {"LSTM": 72, "GRU": 90, "RNN_TANH": 260, "RNN_RELU": 260}


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("layout", ["padded", "batch_first", "packed_bidirectional"])
@pytest.mark.parametrize("threads", [1, 2])
def test_large_weight_strips(mode, layout, threads):
    with num_threads(threads):
        steps, batch = 6, 48
        lengths = [steps - i * 2 // batch for i in range(batch)]  # 6 and 5: 264 rows packed
        ref, fused, x, call = layout_pair(mode, 512, LARGE_STRIPS_H[mode], steps, batch, layout,
                                          lengths)
        assert_same_run(ref, fused, call, [x])
        assert_same_inference(ref, fused, call, **TOL[torch.float64])


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("hidden", [256, 300], ids=["aligned", "unaligned"])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_few_rows_wide_layer(mode, hidden, threads, dtype):
    """A few steps of a small batch through a wide layer: the CPU's products of all rows by one
    weight (x W_ih^T, dgates W_ih) share the weight's column strips out across threads instead of
    rows (too few), and the weight gradients come out in whichever orientation fills the vector
    lanes (256: dW itself; 300 units: dW^T, transposed after), against torch.nn."""
    with num_threads(threads):
        ref, fused = make_pair(mode, hidden, hidden, dtype=dtype)
        x = torch.randn(2, 8, hidden, dtype=dtype, requires_grad=True)
        assert_same_run(ref, fused, lambda m: m(x), [x], dtype)


# Where the input projection would need an [N, G] buffer of its own (no autograd; GRU in
# training), N * G > 256K (csrc/cpu/backend.h: kSmallPostLoop) and W_ih is below 1 MB
# (kStepProjectionMaxWeightBytes; beyond it, one product before the loop), the CPU projects
# chunks of steps inside the loop, each part its own rows or units (sequence.h: project_chunk).
# Hidden sizes for row parts and for unit parts on two threads (UNIT_SPLIT_H).
STEP_PROJECTION_SMALL_LOOP = 256 * 1024


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("parts", ["rows", "units"])
@pytest.mark.parametrize("layout", ["padded", "packed_bidirectional", "batch_first"])
@pytest.mark.parametrize("threads", [1, 2])
def test_step_projection(mode, parts, layout, threads):
    """Chunks of steps projected in the loop: one product per chunk where the part has all rows
    (packed: rows stop inside a chunk), one per step for row parts and batch-first views; both
    directions. Without autograd and with it, against torch.nn."""
    with num_threads(threads):
        hidden = 40 if parts == "rows" else UNIT_SPLIT_H[mode]
        batch, inp = (48 if parts == "rows" else 6), 24
        gates = {"LSTM": 4, "GRU": 3}.get(mode, 1) * hidden
        steps = STEP_PROJECTION_SMALL_LOOP // (batch * gates) + 2  # just past the small path
        lengths = [steps - (7 * i) % steps for i in range(batch)]
        ref, fused, x, call = layout_pair(mode, inp, hidden, steps, batch, layout, lengths)
        assert_same_inference(ref, fused, call)
        assert_same_run(ref, fused, call, [x])


# Where a layer's gate gradients reach 1M elements (csrc/cpu/backend.h:
# kStepGradientMinElements), or pass 256K with at most 32 inputs (kStepGradientSmallInputs), and
# a row part's partial sums of dW_ih, dW_hh and the biases fit in 640 KB
# (kStepGradientMaxSumsBytes), the CPU computes the weight, bias and input gradients inside the
# backward loop, a chunk of steps at a time (sequence.h: gradient_chunk).
STEP_GRADIENT_MIN = 1024 * 1024
STEP_GRADIENT_MIN_SMALL_INPUTS = 256 * 1024
STEP_GRADIENT_CONFIGS = {  # name -> (mode, hidden, constructor kwargs, saved columns per unit)
    "LSTM": ("LSTM", 48, {}, 4),
    "LSTM_128": ("LSTM", 128, {}, 4),  # partial sums of 76K elements (606 KB in fp64)
    "LSTM_proj": ("LSTM", 48, {"proj_size": 20}, 4),
    "GRU": ("GRU", 48, {}, 4),
    "GRU_no_bias": ("GRU", 48, {"bias": False}, 4),
    "RNN_TANH": ("RNN_TANH", 160, {}, 1),  # (RNN_RELU differs only in the gate math)
}


@pytest.mark.parametrize("config", list(STEP_GRADIENT_CONFIGS))
@pytest.mark.parametrize("layout", ["padded", "packed_bidirectional", "batch_first"])
@pytest.mark.parametrize("grads", ["all", "weights_only"])
@pytest.mark.parametrize("threads", [1, 2])
def test_step_gradients(config, layout, grads, threads):
    """Weight, bias and input gradients summed inside the backward loop, in chunks of steps, by
    one part or two: padded, packed (runs of steps end where sequences do; both directions)
    and batch-first (x read as a strided view); with the input's and h0's gradients, and without
    (no dx, no dh_0 product), against torch.nn."""
    check_step_gradients(config, layout, grads, threads, STEP_GRADIENT_MIN)


@pytest.mark.parametrize("config", list(STEP_GRADIENT_CONFIGS))
@pytest.mark.parametrize("layout", ["padded", "packed_bidirectional"])
def test_step_gradients_small_inputs(config, layout):
    """The same from 256K gate-gradient elements, the layer having 16 inputs."""
    check_step_gradients(config, layout, "all", 2, STEP_GRADIENT_MIN_SMALL_INPUTS)


@pytest.mark.parametrize("config", [c for c in STEP_GRADIENT_CONFIGS if c != "GRU_no_bias"])
@pytest.mark.parametrize("layout", ["padded", "packed_bidirectional"])
def test_step_gradients_fp32_bias_sums(config, layout):
    """The bias gradients that the step gradients sum, chunk by chunk, in fp32 (of 4-7K rows per
    part): at most 2.5e-7 relative (seen: 2e-8 to 1.4e-7 over 6 seeds). The chunks' sums added
    term by term onto one running total, as they were, lost 3.6e-7 to 1e-6."""
    mode, hidden, kwargs, per_unit = STEP_GRADIENT_CONFIGS[config]
    batch, inp = 48, 16
    steps = 8 * STEP_GRADIENT_MIN_SMALL_INPUTS // (batch * per_unit * hidden) + 8
    lengths = [steps - (7 * i) % (steps // 2) for i in range(batch)]
    errors = fp32_bias_errors(mode, inp, hidden, steps, batch, kwargs,
                              lengths if layout == "packed_bidirectional" else None)
    assert max(errors.values()) <= 2.5e-7, errors


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN_TANH"])
@pytest.mark.parametrize("hidden", [1, 2])
def test_fp32_bias_sums_narrow_rows(mode, hidden):
    """The same for a narrow layer over 128K rows (1000 steps of 128), its bias gradients one or
    a few columns: summed after the loop (the RNN) or inside it (LSTM, GRU). The RNN's column
    sums ran down all rows in two chains: 2e-6 to 2.5e-5 relative (H 1 and 2, 3 seeds each),
    where torch.nn's fp32 was 1e-8 to 7e-7; in blocks of 256 rows, each block's sum added with
    compensation, 1e-8 to 5e-8."""
    errors = fp32_bias_errors(mode, 3, hidden, 1000, 128, {})
    assert max(errors.values()) <= 2.5e-7, errors


def fp32_bias_errors(mode, inp, hidden, steps, batch, kwargs, lengths=None):
    """Relative errors of fused_rnn's fp32 bias gradients against torch.nn's in fp64 (two threads,
    packed and bidirectional where `lengths` are given). With W_hh = 0 each gate gradient is
    exact to an ulp or two, so what they lose is their sums'. (No ReLU: a pre-activation near 0
    may fall on either side in fp32 and fp64.)"""
    with num_threads(2):
        ref, fused = make_pair(mode, inp, hidden, dtype=torch.float32,
                               bidirectional=lengths is not None, **kwargs)
        with torch.no_grad():
            for name, w in [*ref.named_parameters(), *fused.named_parameters()]:
                if name.startswith("weight_hh"):
                    w.zero_()
        oracle = ref.double()  # torch.nn in fp64
        x = torch.randn(steps, batch, inp, dtype=torch.float64)
        biases = []
        for m in (fused, oracle):
            data = x.to(next(m.parameters()).dtype)
            if lengths is not None:
                data = pack_padded_sequence(data, lengths, enforce_sorted=False)
            loss = sum(t.sum() for t in flatten(m(data)))
            named = [(n, p) for n, p in m.named_parameters() if n.startswith("bias")]
            biases.append(dict(zip([n for n, _ in named],
                                   torch.autograd.grad(loss, [p for _, p in named]))))
        return {name: relative_error(biases[0][name], want) for name, want in biases[1].items()}


def check_step_gradients(config, layout, grads, threads, elements):
    mode, hidden, kwargs, per_unit = STEP_GRADIENT_CONFIGS[config]
    with num_threads(threads):
        batch, inp, dirs = 48, 16, 2 if layout == "packed_bidirectional" else 1
        # Every length at least half the steps: N * saved columns passes the threshold, packed too.
        steps = 2 * elements // (batch * per_unit * hidden) + 8
        lengths = [steps - (7 * i) % (steps // 2) for i in range(batch)]
        ref, fused = make_pair(mode, inp, hidden, bidirectional=dirs == 2,
                               batch_first=layout == "batch_first", **kwargs)
        shape = (batch, steps, inp) if layout == "batch_first" else (steps, batch, inp)
        x = torch.randn(*shape, dtype=torch.float64, requires_grad=grads == "all")
        leaves, hx = [], None
        if grads == "all":
            state = kwargs.get("proj_size") or hidden
            leaves = [x, torch.randn(dirs, batch, state, dtype=torch.float64, requires_grad=True)]
            if mode == "LSTM":
                leaves.append(torch.randn(dirs, batch, hidden, dtype=torch.float64,
                                          requires_grad=True))
            hx = tuple(leaves[1:]) if mode == "LSTM" else leaves[1]

        def call(m):
            data = (pack_padded_sequence(x, lengths, enforce_sorted=False)
                    if layout == "packed_bidirectional" else x)
            return m(data) if hx is None else m(data, hx)

        assert_same_run(ref, fused, call, leaves)
