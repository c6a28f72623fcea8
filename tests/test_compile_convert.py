"""torch.compile(fullgraph=True) through the fused modules, fused_rnn.convert, per-step cell
states."""

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fused_rnn
from conftest import TOL, make_pair


class Tagger(torch.nn.Module):
    """Embedding -> RNN -> Linear, the seed models' shape."""

    def __init__(self, rnn_cls, packed=False, **kw):
        super().__init__()
        self.packed = packed
        self.emb = torch.nn.Embedding(40, 6)
        self.rnn = rnn_cls(6, 8, **kw)
        out = (kw.get("proj_size") or 8) * (2 if kw.get("bidirectional") else 1)
        self.fc = torch.nn.Linear(out, 3)

    def forward(self, tokens, lengths=None):
        x = self.emb(tokens)
        if self.packed:
            x = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
            out, _ = self.rnn(x)
            out, _ = pad_packed_sequence(out, batch_first=True)
        else:
            out, _ = self.rnn(x)
        return self.fc(out)


COMPILE_CASES = [
    ("LSTM", dict(num_layers=2, bidirectional=True, batch_first=True), False, "aot_eager"),
    ("GRU", dict(batch_first=True), False, "aot_eager"),
    ("RNN", dict(batch_first=True, nonlinearity="relu", num_layers=2), False, "aot_eager"),
    ("LSTM", dict(batch_first=True, proj_size=4), False, "aot_eager"),
    ("LSTM", dict(batch_first=True, bidirectional=True), False, "inductor"),
    ("GRU", dict(batch_first=True, num_layers=2), False, "inductor"),
]
# bf16 on the CPU (fp32 kernels on fp32 copies, csrc/cpu/rnn_cpu.cpp): the same graph.
COMPILE_CASES = [(*case, torch.float32) for case in COMPILE_CASES] + [
    ("LSTM", dict(num_layers=2, batch_first=True), False, "aot_eager", torch.bfloat16),
    ("GRU", dict(batch_first=True), False, "inductor", torch.bfloat16),
]


@pytest.mark.parametrize("name,kw,packed,backend,dtype", COMPILE_CASES)
def test_compile_fullgraph_matches_eager(name, kw, packed, backend, dtype):
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = Tagger(getattr(fused_rnn, name), packed, **kw).to(dtype)
    tokens = torch.randint(0, 40, (3, 7))
    eager_out = model(tokens)
    eager_out.square().sum().backward()
    eager_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    out = compiled(tokens)
    out.square().sum().backward()
    # (inductor may round the bf16 Linear's and Embedding's results at other points)
    tol = TOL[torch.float32] if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(out, eager_out, **tol)
    for (n, p), g in zip(model.named_parameters(), eager_grads):
        torch.testing.assert_close(p.grad, g, **tol, msg=n)


def test_torch_nn_lstm_graph_breaks_but_fused_does_not():
    """The point of the feature: torch.nn's LSTM cannot be captured in one graph."""
    torch._dynamo.reset()
    ref_model = Tagger(torch.nn.LSTM, batch_first=True)
    with pytest.raises(Exception, match="RNN, GRU, or LSTM"):
        torch.compile(ref_model, fullgraph=True, backend="aot_eager")(torch.randint(0, 40, (2, 5)))
    torch._dynamo.reset()
    fused_model = fused_rnn.convert(ref_model)
    torch.compile(fused_model, fullgraph=True, backend="aot_eager")(torch.randint(0, 40, (2, 5)))


@pytest.mark.parametrize("cls", ["LSTMCell", "GRUCell", "RNNCell"])
def test_compile_cells(cls):
    torch._dynamo.reset()
    cell = getattr(fused_rnn, cls)(4, 5)
    x = torch.randn(6, 3, 4)

    def unroll(xs):
        state = None
        for x_t in xs:
            state = cell(x_t) if state is None else cell(x_t, state)
        return state[0] if isinstance(state, tuple) else state

    torch.testing.assert_close(torch.compile(unroll, fullgraph=True, backend="aot_eager")(x),
                               unroll(x), **TOL[torch.float32])


def test_convert_keeps_weights_device_dtype_mode_and_parameters():
    torch.manual_seed(0)
    model = torch.nn.Sequential()
    model.add_module("emb", torch.nn.Embedding(30, 5))
    model.add_module("lstm", torch.nn.LSTM(5, 7, num_layers=2, bidirectional=True,
                                           dtype=torch.float64))
    model.add_module("inner", torch.nn.ModuleDict({"gru": torch.nn.GRU(4, 3),
                                                   "cell": torch.nn.RNNCell(4, 3,
                                                                            nonlinearity="relu")}))
    model.eval()
    params_before = {n: p for n, p in model.named_parameters()}
    state_before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(6, 2, 5, dtype=torch.float64)
    ref_out = model.lstm(x)[0]
    ref_gru = model.inner["gru"](torch.randn(3, 2, 4))

    out = fused_rnn.convert(model)
    assert out is model
    assert type(model.lstm) is fused_rnn.LSTM
    assert type(model.inner["gru"]) is fused_rnn.GRU
    assert type(model.inner["cell"]) is fused_rnn.RNNCell
    assert model.inner["cell"].nonlinearity == "relu"
    assert type(model.emb) is torch.nn.Embedding
    assert not model.lstm.training and not model.inner["gru"].training
    for n, p in model.named_parameters():
        assert p is params_before[n], n  # the same Parameter objects: optimizers keep working
    for k, v in model.state_dict().items():
        assert torch.equal(v, state_before[k])
    assert model.lstm.weight_ih_l0.dtype == torch.float64
    torch.testing.assert_close(model.lstm(x)[0], ref_out, **TOL[torch.float64])
    assert model.inner["gru"](torch.randn(3, 2, 4))[0].shape == ref_gru[0].shape


def test_convert_trains_like_the_original():
    torch.manual_seed(0)
    ref = Tagger(torch.nn.LSTM, batch_first=True, bidirectional=True).double()
    fused = fused_rnn.convert(Tagger(torch.nn.LSTM, batch_first=True, bidirectional=True).double())
    fused.load_state_dict(ref.state_dict())
    opts = [torch.optim.Adam(m.parameters(), lr=1e-2) for m in (ref, fused)]
    for _ in range(4):
        tokens = torch.randint(0, 40, (4, 9))
        for m, opt in zip((ref, fused), opts):
            opt.zero_grad()
            m(tokens).square().mean().backward()
            opt.step()
    for (n, a), b in zip(ref.named_parameters(), fused.parameters()):
        torch.testing.assert_close(b, a, **TOL[torch.float64], msg=n)


def test_convert_leaves_subclasses_alone():
    class MyLSTM(torch.nn.LSTM):
        pass

    m = torch.nn.Sequential(MyLSTM(3, 4))
    fused_rnn.convert(m)
    assert type(m[0]) is MyLSTM


# ---- per-step cell states


def _reference_cell_states(ref: torch.nn.LSTM, x, hx=None):
    """c_t of every step of the last layer, from torch.nn.LSTMCell steps over the last layer's
    input (the previous layers run as a torch.nn.LSTM)."""
    L, dirs = ref.num_layers, 2 if ref.bidirectional else 1
    layer_in = x
    if L > 1:
        prev = torch.nn.LSTM(ref.input_size, ref.hidden_size, num_layers=L - 1,
                             bidirectional=ref.bidirectional, dtype=x.dtype)
        prev.load_state_dict({k: v for k, v in ref.state_dict().items()
                              if not k.split("_l")[-1].startswith(str(L - 1))})
        layer_in = prev(x)[0]
    cells = []
    for d in range(dirs):
        sfx = f"_l{L - 1}" + ("_reverse" if d else "")
        cell = torch.nn.LSTMCell(layer_in.size(-1), ref.hidden_size, dtype=x.dtype)
        cell.weight_ih = getattr(ref, "weight_ih" + sfx)
        cell.weight_hh = getattr(ref, "weight_hh" + sfx)
        cell.bias_ih = getattr(ref, "bias_ih" + sfx)
        cell.bias_hh = getattr(ref, "bias_hh" + sfx)
        steps = range(x.size(0) - 1, -1, -1) if d else range(x.size(0))
        h = c = torch.zeros(x.size(1), ref.hidden_size, dtype=x.dtype)
        cs = [None] * x.size(0)
        for t in steps:
            h, c = cell(layer_in[t], (h, c))
            cs[t] = c
        cells.append(torch.stack(cs))
    return torch.cat(cells, -1)


@pytest.mark.parametrize("layers,bidirectional", [(1, False), (2, True)])
def test_cell_states_values_and_gradients(layers, bidirectional):
    ref, fused = make_pair("LSTM", 4, 5, num_layers=layers, bidirectional=bidirectional)
    x = torch.randn(6, 3, 4, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(6, 3, 5 * (2 if bidirectional else 1), dtype=torch.float64)

    def call_ref(m):
        return _reference_cell_states(m, x)

    def call_fused(m):
        out, (h, c), cells = m(x, cell_states=True)
        assert torch.equal(cells[-1, :, :5], c[-1 if not bidirectional else -2])
        return cells

    c_ref, c_fused = call_ref(ref), call_fused(fused)
    torch.testing.assert_close(c_fused, c_ref, **TOL[torch.float64])
    # The reference runs the earlier layers on a copy, so compare the gradients of the input
    # (which flows through every layer) and of the last layer's parameters.
    last = [n for n, _ in ref.named_parameters() if f"_l{layers - 1}" in n]
    g_ref = torch.autograd.grad((c_ref * weights).sum(), [x] + [getattr(ref, n) for n in last])
    g_fus = torch.autograd.grad((call_fused(fused) * weights).sum(),
                                [x] + [getattr(fused, n) for n in last])
    for a, b in zip(g_ref, g_fus):
        torch.testing.assert_close(b, a, **TOL[torch.float64])


def test_cell_states_packed_and_lengths_and_gradcheck():
    fused = fused_rnn.LSTM(3, 4, batch_first=True, dtype=torch.float64)
    x = torch.randn(3, 5, 3, dtype=torch.float64, requires_grad=True)
    out, (h, c), cells = fused(x, lengths=[5, 2, 4], cell_states=True)
    assert cells.shape == (3, 5, 4)
    assert torch.equal(cells[1, 2:], torch.zeros(3, 4, dtype=torch.float64))  # past length 2
    torch.testing.assert_close(cells[1, 1], c[0, 1])  # h_n/c_n at each sequence's own end
    packed = pack_padded_sequence(x, [5, 2, 4], batch_first=True, enforce_sorted=False)
    _, _, cells_packed = fused(packed, cell_states=True)
    assert torch.equal(cells_packed.batch_sizes, packed.batch_sizes)

    def fn(inp):
        return fused(inp, cell_states=True)[2]

    assert torch.autograd.gradcheck(fn, (x,))


def test_cell_states_only_for_lstm():
    with pytest.raises(ValueError, match="only for LSTM"):
        fused_rnn.GRU(3, 4)(torch.randn(2, 1, 3), cell_states=True)


# lengths= under torch.compile: one op with static shapes (fused_rnn/_lengths.py).
LENGTHS_CASES = [
    ("LSTM", dict(num_layers=2, bidirectional=True, batch_first=True, dropout=0.3), "aot_eager",
     True),
    ("GRU", dict(num_layers=2, dropout=0.5), "aot_eager", False),  # eval: no masks
    ("GRU", dict(), "aot_eager", True),
    ("RNN_RELU", dict(num_layers=2), "aot_eager", True),
    ("LSTM", dict(proj_size=3, num_layers=2), "aot_eager", True),
    ("GRU", dict(bidirectional=True, batch_first=True), "inductor", True),
]


@pytest.mark.parametrize("mode,kw,backend,training", LENGTHS_CASES)
def test_compile_lengths_fullgraph_dynamic(mode, kw, backend, training):
    """A model with variable lengths compiles in one graph (fullgraph, dynamic shapes: new B, T
    and lengths run without a graph break), and equals torch.nn on the packed input: outputs,
    states and every gradient, hx given or not, the dropout masks of the same seed included
    (and none in eval mode)."""
    from torch._dynamo.utils import counters

    ref, fused = make_pair(mode, 5, 6, **kw)
    ref.train(training)
    fused.train(training)
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(fused, fullgraph=True, dynamic=True, backend=backend)
    batch_first = kw.get("batch_first", False)
    g = torch.Generator().manual_seed(0)
    for step, (B, T) in enumerate([(3, 5), (4, 7), (2, 3)]):
        x = torch.randn(*((B, T, 5) if batch_first else (T, B, 5)), dtype=torch.float64,
                        generator=g, requires_grad=True)
        lengths = torch.randint(1, T + 1, (B,), generator=g)
        hx = None
        if step == 1:  # the state given
            layers = kw.get("num_layers", 1) * (2 if kw.get("bidirectional") else 1)
            h = torch.randn(layers, B, kw.get("proj_size") or 6, dtype=torch.float64,
                            generator=g, requires_grad=True)
            hx = (h, torch.randn(layers, B, 6, dtype=torch.float64, generator=g,
                                 requires_grad=True)) if mode == "LSTM" else h
        leaves = [x] + ([] if hx is None else list(hx) if mode == "LSTM" else [hx])
        results = []
        for model in (ref, compiled):
            torch.manual_seed(step)
            if model is ref:
                out, hidden = ref(pack_padded_sequence(x, lengths, batch_first=batch_first,
                                                       enforce_sorted=False), hx)
                out = pad_packed_sequence(out, batch_first=batch_first, total_length=T)[0]
            else:
                out, hidden = model(x, hx, lengths=lengths)
            states = list(hidden) if mode == "LSTM" else [hidden]
            loss = out.square().sum() + sum((s * s.detach().sin()).sum() for s in states)
            params = list((ref if model is ref else fused).parameters())
            results.append([out, *states, *torch.autograd.grad(loss, leaves + params)])
        for want, got in zip(*results):
            torch.testing.assert_close(got, want, **TOL[torch.float64])
    assert not counters["graph_break"]


def test_compile_lengths_cell_states():
    """cell_states=True with lengths= under torch.compile: the eager module's c_t per step (zero
    past each length), and the gradients through them."""
    fused = fused_rnn.LSTM(3, 4, batch_first=True, bidirectional=True, dtype=torch.float64)
    torch._dynamo.reset()
    compiled = torch.compile(fused, fullgraph=True, backend="aot_eager")
    x = torch.randn(3, 5, 3, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([5, 2, 4])
    results = []
    for model in (fused, compiled):
        out, (h, c), cells = model(x, lengths=lengths, cell_states=True)
        results.append([out, h, c, cells, *torch.autograd.grad(cells.sin().sum() + out.sum(),
                                                               [x, *fused.parameters()])])
    for want, got in zip(*results):
        torch.testing.assert_close(got, want, **TOL[torch.float64])
    assert torch.equal(results[1][3][1, 2:], torch.zeros(3, 8, dtype=torch.float64))


def test_compile_lengths_invalid():
    """The value checks of lengths run inside the op under torch.compile, with eager's message."""
    torch._dynamo.reset()
    compiled = torch.compile(fused_rnn.GRU(3, 4), fullgraph=True, backend="aot_eager")
    with pytest.raises(Exception, match="must not exceed the sequence length 6"):
        compiled(torch.randn(6, 3, 3), lengths=torch.tensor([7, 1, 2]))
