"""The registered ops: opcheck (schema, fake kernel, autograd registration, AOT dispatch) and
gradcheck in fp64, every mode, projected, packed, reversed."""

import pytest
import torch

import fused_rnn
from fused_rnn import _ops
from fused_rnn.info import OPS, has_kernel

I, H, P, T, B = 3, 4, 2, 5, 3
MODES = ["LSTM", "GRU", "RNN_TANH", "RNN_RELU"]


def layer_args(mode, proj=False, packed=False, bias=True, reverse=False, train=True,
               dtype=torch.float64, requires_grad=True):
    g = _ops.gates_of(mode) * H
    state = P if proj else H

    def t(*shape):
        return torch.randn(*shape, dtype=dtype, requires_grad=requires_grad)

    if packed:
        batch_sizes = torch.tensor([3, 3, 2, 1, 1])
        x = t(int(batch_sizes.sum()), I)
    else:
        batch_sizes = None
        x = t(T, B, I)
    return (mode, x, batch_sizes, t(B, state), t(B, H) if mode == "LSTM" else None, t(g, I),
            t(g, state), t(g) if bias else None, t(g) if bias else None,
            t(P, H) if proj else None, reverse, train)


CASES = [
    dict(mode=m, proj=proj, packed=packed, reverse=rev, bias=bias)
    for m in MODES
    for proj in ([False, True] if m == "LSTM" else [False])
    for packed in (False, True)
    for rev in (False, True)
    for bias in (True, False)
]


def case_id(c):
    return "-".join([c["mode"]] + [k for k in ("proj", "packed", "reverse") if c[k]]
                    + ([] if c["bias"] else ["nobias"]))


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_opcheck_forward(case):
    args = layer_args(**case)
    torch.library.opcheck(torch.ops.fused_rnn.rnn_forward.default, args)


@pytest.mark.parametrize("case", [c for c in CASES if c["bias"]], ids=case_id)
def test_opcheck_backward(case):
    args = layer_args(**case, requires_grad=False)
    output, hy, cy, workspace = torch.ops.fused_rnn.rnn_forward(*args)
    mode = args[0]
    bw_args = (*args[:11], workspace, torch.randn_like(output), torch.randn_like(hy),
               torch.randn_like(cy) if mode == "LSTM" else None)
    torch.library.opcheck(torch.ops.fused_rnn.rnn_backward.default, bw_args)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_gradcheck(case):
    args = layer_args(**case)
    mode, batch_sizes, reverse = args[0], args[2], args[10]
    tensors = [a for a in args[1:10] if torch.is_tensor(a) and a.requires_grad]
    positions = [i for i, a in enumerate(args) if torch.is_tensor(a) and a.requires_grad]

    def fn(*ts):
        full = list(args)
        for pos, t in zip(positions, ts):
            full[pos] = t
        output, hy, cy = _ops.rnn_layer(*full[:10], reverse=reverse, train=True)
        return (output, hy, cy) if mode == "LSTM" else (output, hy)

    assert torch.autograd.gradcheck(fn, tensors, eps=1e-6, atol=1e-5, rtol=1e-4)
    del batch_sizes


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
