"""Module behaviour that torch.nn users rely on: construction, parameters, state dicts, copies,
device/dtype moves, the lengths= extension."""

import copy
import io
import pickle

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fused_rnn
from conftest import MODES, assert_same_run, make_pair

CONSTRUCTIONS = [
    ("LSTM", (5, 6), {}),
    ("LSTM", (5, 6, 2), {"proj_size": 3, "bidirectional": True, "bias": False}),
    ("GRU", (5, 6), {"num_layers": 3, "batch_first": True, "dropout": 0.2}),
    ("RNN_TANH", (5, 6, 2), {}),
    ("RNN_RELU", (5, 6), {}),
]


@pytest.mark.parametrize("mode,args,kwargs", CONSTRUCTIONS)
def test_same_parameters_and_init_as_torch(mode, args, kwargs):
    cls, extra = MODES[mode]
    torch.manual_seed(0)
    ref = getattr(torch.nn, cls)(*args, **extra, **kwargs)
    torch.manual_seed(0)
    fused = getattr(fused_rnn, cls)(*args, **extra, **kwargs)
    assert repr(fused) == repr(ref)
    assert [n for n, _ in fused.named_parameters()] == [n for n, _ in ref.named_parameters()]
    for (name, a), b in zip(ref.named_parameters(), fused.parameters()):
        assert a.shape == b.shape, name
        torch.testing.assert_close(b, a, rtol=0, atol=0)  # same initialisation, same RNG draws
    assert fused.all_weights.__len__() == ref.all_weights.__len__()


def test_rnn_positional_nonlinearity():
    torch.manual_seed(0)
    ref = torch.nn.RNN(3, 4, 1, "relu", False)
    torch.manual_seed(0)
    fused = fused_rnn.RNN(3, 4, 1, "relu", False)
    assert fused.mode == ref.mode == "RNN_RELU" and fused.nonlinearity == "relu"
    assert fused.bias is False and repr(fused) == repr(ref)


@pytest.mark.parametrize("mode,args,kwargs", CONSTRUCTIONS)
def test_state_dict_both_ways(mode, args, kwargs):
    cls, extra = MODES[mode]
    ref = getattr(torch.nn, cls)(*args, **extra, **kwargs)
    fused = getattr(fused_rnn, cls)(*args, **extra, **kwargs)
    fused.load_state_dict(ref.state_dict())
    for (name, a), b in zip(ref.named_parameters(), fused.parameters()):
        assert torch.equal(a, b), name
    back = getattr(torch.nn, cls)(*args, **extra, **kwargs)
    with torch.no_grad():
        for p in fused.parameters():
            p.add_(1.0)
    back.load_state_dict(fused.state_dict())
    for (name, a), b in zip(back.named_parameters(), fused.parameters()):
        assert torch.equal(a, b), name
    # and the loaded weights are the ones the kernel uses
    ref.load_state_dict(fused.state_dict())
    ref.eval(), fused.eval()
    x = torch.randn(4, 2, args[0])
    torch.testing.assert_close(fused(x)[0], ref(x)[0], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("mode", list(MODES))
def test_deepcopy_pickle_to_double(mode):
    ref, fused = make_pair(mode, 3, 4, num_layers=2, dtype=torch.float32)
    x = torch.randn(5, 2, 3)
    expected = fused(x)[0]
    for clone in (copy.deepcopy(fused), pickle.loads(pickle.dumps(fused))):
        torch.testing.assert_close(clone(x)[0], expected, rtol=0, atol=0)
    buf = io.BytesIO()
    torch.save(fused, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    torch.testing.assert_close(loaded(x)[0], expected, rtol=0, atol=0)
    ref.double(), fused.double()
    xd = x.double()
    torch.testing.assert_close(fused(xd)[0], ref(xd)[0], atol=1e-8, rtol=1e-7)
    fused.to(torch.float32)
    assert fused(x)[0].dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in fused.parameters())


def test_weight_reassignment_is_used():
    """Assigning a new Parameter (as torch.func.functional_call does) takes effect."""
    ref, fused = make_pair("LSTM", 3, 4)
    new = torch.nn.Parameter(torch.randn_like(fused.weight_hh_l0))
    ref.weight_hh_l0 = torch.nn.Parameter(new.detach().clone())
    fused.weight_hh_l0 = new
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    torch.testing.assert_close(fused(x)[0], ref(x)[0], atol=1e-8, rtol=1e-7)
    params = {k: v * 0.5 for k, v in fused.named_parameters()}
    out_f = torch.func.functional_call(fused, params, (x,))[0]
    out_r = torch.func.functional_call(ref, params, (x,))[0]
    torch.testing.assert_close(out_f, out_r, atol=1e-8, rtol=1e-7)
    # Gradients reach the tensors passed to functional_call.
    leaves = {k: v.detach().requires_grad_() for k, v in params.items()}
    grads = [torch.autograd.grad(torch.func.functional_call(m, leaves, (x,))[0].sum(),
                                 list(leaves.values())) for m in (ref, fused)]
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, atol=1e-8, rtol=1e-7)


@pytest.mark.parametrize("mode", list(MODES))
def test_parametrized_weights(mode):
    """A parametrization (weight_norm, recomputed on every access and no longer in the
    module's own parameters) is what the forward uses, and its originals get gradients."""
    ref, fused = make_pair(mode, 3, 4, num_layers=2)
    for m in (ref, fused):
        torch.nn.utils.parametrizations.weight_norm(m, "weight_hh_l1")
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    assert_same_run(ref, fused, lambda m: m(x))


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("as_tensor", [False, True])
def test_lengths_keyword_equals_packing(mode, batch_first, as_tensor):
    ref, fused = make_pair(mode, 3, 4, num_layers=2, bidirectional=True, batch_first=batch_first)
    lengths = [2, 6, 1, 6, 4]
    shape = (5, 6, 3) if batch_first else (6, 5, 3)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)

    def call(m):
        if m is fused:
            return m(x, lengths=torch.tensor(lengths) if as_tensor else lengths)
        out, hidden = m(pack_padded_sequence(x, lengths, batch_first=batch_first,
                                             enforce_sorted=False))
        return pad_packed_sequence(out, batch_first=batch_first, total_length=6)[0], hidden

    assert_same_run(ref, fused, call, [x])


@pytest.mark.parametrize("lengths,error", [
    ([6, 0, 1, 2, 3], "Length of all samples has to be greater than 0"),
    ([7, 1, 1, 2, 3], "must not exceed the sequence length 6"),
    ([6, 1, 1], "one length per batch element"),
])
def test_lengths_keyword_invalid(lengths, error):
    fused = fused_rnn.LSTM(3, 4)
    with pytest.raises((ValueError, RuntimeError), match=error):
        fused(torch.randn(6, 5, 3), lengths=lengths)


@pytest.mark.parametrize("lengths", [[6, 6, 6], [6, 1, 1], [1, 1, 1]])
def test_packed_edge_lengths(lengths):
    ref, fused = make_pair("LSTM", 3, 4, bidirectional=True)
    x = torch.randn(6, 3, 3, dtype=torch.float64, requires_grad=True)
    assert_same_run(ref, fused, lambda m: m(pack_padded_sequence(x, lengths, enforce_sorted=False)),
                    [x])


def test_packed_batch_of_one():
    ref, fused = make_pair("GRU", 3, 4, num_layers=2)
    x = torch.randn(6, 1, 3, dtype=torch.float64, requires_grad=True)
    assert_same_run(ref, fused, lambda m: m(pack_padded_sequence(x, [4])), [x])
