"""Bad arguments get torch.nn's exception type and message."""

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence

import fused_rnn
from conftest import MODES


def raised(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - the point is to compare whatever is raised
        return type(e), str(e)
    return None


def assert_same_error(ref_fn, fused_fn, same_message=True):
    ref, fused = raised(ref_fn), raised(fused_fn)
    assert ref is not None, "torch.nn accepted this input; the case is wrong"
    assert fused is not None, f"fused_rnn accepted what torch.nn rejects with {ref}"
    assert fused[0] is ref[0], (fused, ref)
    if same_message:
        assert fused[1] == ref[1]


CONSTRUCTOR_CASES = [
    ("LSTM", (3, 4), {"proj_size": 4}),
    ("LSTM", (3, 4), {"proj_size": -1}),
    ("LSTM", (3, 4), {"proj_size": 2.0}),
    ("GRU", (3, 4), {"proj_size": 2}),
    ("RNN_TANH", (3, 4), {"proj_size": 2}),
    ("RNN_TANH", (3, 4), {"nonlinearity": "sigmoid"}),
    ("LSTM", (0, 4), {}),
    ("LSTM", (3, 0), {}),
    ("LSTM", (3, 4), {"num_layers": 0}),
    ("GRU", (3, 4.0), {}),
    ("GRU", (3, 4), {"num_layers": 1.5}),
    ("RNN_RELU", (3, 4), {"dropout": 1.5}),
    ("RNN_RELU", (3, 4), {"dropout": True}),
    ("LSTM", (3, 4), {"bias": 1}),
    ("LSTM", ("3", 4), {}),
]


@pytest.mark.parametrize("mode,args,kwargs", CONSTRUCTOR_CASES)
def test_constructor_errors(mode, args, kwargs):
    cls, extra = MODES[mode]
    kwargs = {**extra, **kwargs}
    assert_same_error(lambda: getattr(torch.nn, cls)(*args, **kwargs),
                      lambda: getattr(fused_rnn, cls)(*args, **kwargs))


def test_rnn_too_many_positional_nonlinearity():
    assert_same_error(lambda: torch.nn.RNN(3, 4, 1, "gelu"), lambda: fused_rnn.RNN(3, 4, 1, "gelu"))


def _hx(mode, shape_h, shape_c=None, dtype=torch.float32):
    h = torch.randn(*shape_h, dtype=dtype)
    if mode == "LSTM":
        return h, torch.randn(*(shape_c or shape_h), dtype=dtype)
    return h


# (name, module kwargs, function of mode -> (input, hx or None)); hidden size 4, input size 3.
# kwargs "modes" limits a case to some modes. torch.nn.LSTM does not check packed input against
# its hx or input_size (its kernel fails later, with a matmul's or a broadcast's message); there
# fused_rnn runs torch.nn's checks instead, so the type is the same and the message says more.
FORWARD_CASES = [
    ("input_4d", {}, lambda m: (torch.randn(2, 5, 2, 3), None)),
    ("input_1d", {}, lambda m: (torch.randn(3), None)),
    ("input_size", {}, lambda m: (torch.randn(5, 2, 7), None)),
    ("input_size_unbatched", {}, lambda m: (torch.randn(5, 7), None)),
    ("input_dtype", {}, lambda m: (torch.randn(5, 2, 3, dtype=torch.float64), None)),
    ("input_dtype_bf16", {}, lambda m: (torch.randn(5, 2, 3, dtype=torch.bfloat16), None)),
    ("zero_length", {}, lambda m: (torch.randn(0, 2, 3), None)),
    ("zero_length_batch_first", {"batch_first": True}, lambda m: (torch.randn(2, 0, 3), None)),
    ("hx_batch", {}, lambda m: (torch.randn(5, 2, 3), _hx(m, (1, 3, 4)))),
    ("hx_layers", {}, lambda m: (torch.randn(5, 2, 3), _hx(m, (2, 2, 4)))),
    ("hx_size", {}, lambda m: (torch.randn(5, 2, 3), _hx(m, (1, 2, 5)))),
    ("hx_bidir", {"bidirectional": True}, lambda m: (torch.randn(5, 2, 3), _hx(m, (1, 2, 4)))),
    ("hx_2d_for_batched", {}, lambda m: (torch.randn(5, 2, 3), _hx(m, (2, 4)))),
    ("hx_3d_for_unbatched", {}, lambda m: (torch.randn(5, 3), _hx(m, (1, 1, 4)))),
    ("hx_unbatched_size", {}, lambda m: (torch.randn(5, 3), _hx(m, (1, 5)))),
    ("cx_size", {"modes": ["LSTM"]}, lambda m: (
        torch.randn(5, 2, 3), _hx(m, (1, 2, 4), (1, 2, 5)))),
    ("hx_batch_first", {"batch_first": True}, lambda m: (torch.randn(2, 5, 3), _hx(m, (1, 5, 4)))),
    ("packed_hx_batch", {}, lambda m: (
        PackedSequence(torch.randn(5, 3), torch.tensor([2, 2, 1])), _hx(m, (1, 3, 4)))),
    ("packed_input_size", {}, lambda m: (
        PackedSequence(torch.randn(5, 6), torch.tensor([2, 2, 1])), None)),
]


FORWARD_PARAMS = [
    pytest.param(mode, name, {k: v for k, v in kwargs.items() if k != "modes"}, make,
                 id=f"{name}-{mode}")
    for name, kwargs, make in FORWARD_CASES
    for mode in kwargs.get("modes", MODES)
]


@pytest.mark.parametrize("mode,name,kwargs,make", FORWARD_PARAMS)
def test_forward_errors(mode, name, kwargs, make):
    cls, extra = MODES[mode]
    torch.manual_seed(0)
    ref = getattr(torch.nn, cls)(3, 4, **extra, **kwargs)
    fused = getattr(fused_rnn, cls)(3, 4, **extra, **kwargs)
    fused.load_state_dict(ref.state_dict())
    x, hx = make(mode)
    args = (x,) if hx is None else (x, hx)
    unchecked_by_torch = mode == "LSTM" and name.startswith("packed")
    assert_same_error(lambda: ref(*args), lambda: fused(*args),
                      same_message=not unchecked_by_torch)


@pytest.mark.parametrize("dtypes,names", [
    ((torch.float32, torch.float64), ("Float", "Double")),
    ((torch.bfloat16, torch.float32), ("BFloat16", "Float")),  # checked before fp32 copies
    ((torch.float16, torch.bfloat16), ("Half", "BFloat16")),
], ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("mode", list(MODES))
def test_hx_dtype_mismatch(mode, dtypes, names):
    """torch.nn's message here comes from whichever backend runs (oneDNN, a matmul); the type
    is RuntimeError in each, and ours names the problem."""
    cls, extra = MODES[mode]
    ref = getattr(torch.nn, cls)(3, 4, **extra, dtype=dtypes[0])
    fused = getattr(fused_rnn, cls)(3, 4, **extra, dtype=dtypes[0])
    x = torch.randn(5, 2, 3, dtype=dtypes[0])
    hx = _hx(mode, (1, 2, 4), dtype=dtypes[1])
    assert_same_error(lambda: ref(x, hx), lambda: fused(x, hx), same_message=False)
    with pytest.raises(RuntimeError, match=f"hx has dtype {names[1]} but input has {names[0]}"):
        fused(x, hx)


def test_op_rejects_bad_batch_sizes():
    w_ih, w_hh = torch.randn(16, 3), torch.randn(16, 4)
    h = torch.zeros(2, 4)
    x = torch.randn(4, 3)
    for sizes, msg in [([2, 3], "non-increasing"), ([1, 1, 1, 1], "must equal the batch size"),
                       ([2, 1], "sum to 3"), ([2, 0, 2], "positive")]:
        with pytest.raises(RuntimeError, match=msg):
            torch.ops.fused_rnn.rnn_forward("LSTM", x, torch.tensor(sizes), h, h.clone(), w_ih,
                                            w_hh, None, None, None, False, False, False)
    with pytest.raises(ValueError, match="Unrecognized RNN mode: LTSM"):
        torch.ops.fused_rnn.rnn_forward("LTSM", x.view(2, 2, 3), None, h, h, w_ih, w_hh, None,
                                        None, None, False, False, False)
