"""fused_rnn.LSTMCell / GRUCell / RNNCell against torch.nn's cells: values, gradients, errors."""

import pytest
import torch

import fused_rnn
from conftest import TOL, assert_same_run
from test_errors import assert_same_error

CELLS = {  # name -> (class name, kwargs)
    "LSTMCell": ("LSTMCell", {}),
    "GRUCell": ("GRUCell", {}),
    "RNNCell_tanh": ("RNNCell", {"nonlinearity": "tanh"}),
    "RNNCell_relu": ("RNNCell", {"nonlinearity": "relu"}),
}


def make_cells(name, bias=True, dtype=torch.float64, input_size=5, hidden=6):
    cls, kw = CELLS[name]
    torch.manual_seed(0)
    ref = getattr(torch.nn, cls)(input_size, hidden, bias=bias, dtype=dtype, **kw)
    torch.manual_seed(0)
    fused = getattr(fused_rnn, cls)(input_size, hidden, bias=bias, dtype=dtype, **kw)
    return ref, fused


def _states(name, batch, dtype, hidden=6):
    shape = (*batch, hidden)
    if name == "LSTMCell":
        return tuple(torch.randn(*shape, dtype=dtype, requires_grad=True) for _ in range(2))
    return torch.randn(*shape, dtype=dtype, requires_grad=True)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("hx_given", [False, True])
@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("name", list(CELLS))
def test_cell_parity(name, bias, batched, hx_given, dtype):
    ref, fused = make_cells(name, bias, dtype)
    assert repr(fused) == repr(ref)
    for (n, a), b in zip(ref.named_parameters(), fused.parameters()):
        assert torch.equal(a, b), n  # same initialisation
    batch = (3,) if batched else ()
    x = torch.randn(*batch, 5, dtype=dtype, requires_grad=True)
    hx = _states(name, batch, dtype) if hx_given else None
    leaves = [x] + (list(hx) if isinstance(hx, tuple) else [hx] if hx is not None else [])

    def call(m):
        out = m(x) if hx is None else m(x, hx)
        return (out[0], out[1]) if isinstance(out, tuple) else (out, ())

    assert_same_run(ref, fused, call, leaves, dtype)


@pytest.mark.parametrize("name", list(CELLS))
def test_cell_unrolled_sequence_matches_layer(name):
    """Stepping a cell over a sequence gives what torch.nn's cell gives, gradients included."""
    ref, fused = make_cells(name)
    xs = torch.randn(8, 2, 5, dtype=torch.float64, requires_grad=True)

    def call(m):
        state = None
        outs = []
        for x in xs:
            state = m(x) if state is None else m(x, state)
            outs.append(state[0] if isinstance(state, tuple) else state)
        return torch.stack(outs), ()

    assert_same_run(ref, fused, call, [xs])


def test_cell_state_dict_and_convert():
    ref = torch.nn.LSTMCell(4, 3)
    fused = fused_rnn.LSTMCell(4, 3)
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(2, 4)
    torch.testing.assert_close(fused(x)[0], ref(x)[0], **TOL[torch.float32])
    converted = fused_rnn.convert(ref)
    assert type(converted) is fused_rnn.LSTMCell
    torch.testing.assert_close(converted(x)[1], ref(x)[1], **TOL[torch.float32])


def _hx(name, b, h, dtype=torch.float32):
    if name == "LSTMCell":
        return torch.randn(b, h, dtype=dtype), torch.randn(b, h, dtype=dtype)
    return torch.randn(b, h, dtype=dtype)


CELL_ERRORS = [
    ("input_3d", lambda n: (torch.randn(2, 2, 3), None)),
    ("input_0d", lambda n: (torch.tensor(1.0), None)),
    ("input_size", lambda n: (torch.randn(2, 5), None)),
    ("hx_batch", lambda n: (torch.randn(2, 3), _hx(n, 3, 4))),
    ("hx_size", lambda n: (torch.randn(2, 3), _hx(n, 2, 5))),
    ("hx_3d", lambda n: (torch.randn(2, 3), tuple(t.unsqueeze(0) for t in _hx(n, 2, 4))
                         if n == "LSTMCell" else _hx(n, 2, 4).unsqueeze(0))),
    ("unbatched_hx_2d", lambda n: (torch.randn(3), _hx(n, 1, 4))),
    ("input_dtype", lambda n: (torch.randn(2, 3, dtype=torch.float64), None)),
    ("hx_dtype", lambda n: (torch.randn(2, 3), _hx(n, 2, 4, torch.float64))),
]


@pytest.mark.parametrize("case,make", CELL_ERRORS, ids=[c[0] for c in CELL_ERRORS])
@pytest.mark.parametrize("name", list(CELLS))
def test_cell_errors(name, case, make):
    ref, fused = make_cells(name, dtype=torch.float32, input_size=3, hidden=4)
    x, hx = make(name)
    args = (x,) if hx is None else (x, hx)
    assert_same_error(lambda: ref(*args), lambda: fused(*args))


def test_cell_cx_mismatch_and_unknown_nonlinearity():
    assert_same_error(
        lambda: torch.nn.LSTMCell(3, 4)(torch.randn(2, 3), (torch.randn(2, 4), torch.randn(2, 5))),
        lambda: fused_rnn.LSTMCell(3, 4)(torch.randn(2, 3), (torch.randn(2, 4), torch.randn(2, 5))))
    ref, fused = torch.nn.RNNCell(3, 4), fused_rnn.RNNCell(3, 4)
    ref.nonlinearity = fused.nonlinearity = "gelu"
    assert_same_error(lambda: ref(torch.randn(2, 3)), lambda: fused(torch.randn(2, 3)))
