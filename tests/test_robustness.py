"""Memory, determinism and thread safety."""

import resource
import threading

import pytest
import torch

import fused_rnn
from conftest import MODES, make_pair
from fused_rnn import _ops


@pytest.mark.parametrize("mode", list(MODES))
def test_long_sequence_trains(mode):
    """T = 10,000 with B = 1: forward, backward and a step, finite and equal to torch.nn."""
    ref, fused = make_pair(mode, 4, 8, dtype=torch.float32)
    x = torch.randn(10_000, 1, 4)
    out_f = fused(x)[0]
    out_f.mean().backward()
    out_r = ref(x)[0]
    out_r.mean().backward()
    torch.testing.assert_close(out_f, out_r, atol=1e-4, rtol=1e-3)
    for (n, a), b in zip(ref.named_parameters(), fused.parameters()):
        assert torch.isfinite(b.grad).all(), n
        torch.testing.assert_close(b.grad, a.grad, atol=1e-4, rtol=1e-3, msg=n)


def _rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_no_memory_growth_over_iterations():
    """1,000 training iterations: the peak resident size stops growing after warm-up."""
    model = fused_rnn.LSTM(16, 32, num_layers=2, bidirectional=True)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(20, 8, 16)

    def step():
        opt.zero_grad()
        out, (h, c) = model(x)
        (out.sum() + h.sum() + c.sum()).backward()
        opt.step()

    for _ in range(100):
        step()
    before = _rss_mb()
    for _ in range(1000):
        step()
    assert _rss_mb() - before < 20, f"peak RSS grew from {before:.0f} MB to {_rss_mb():.0f} MB"


@pytest.mark.parametrize("mode", list(MODES))
def test_workspace_size_is_documented_formula(mode):
    """The training workspace of a layer is (saved gates + h_{t-1} [+ c_{t-1}] [+ r]) per token,
    as README and _ops.workspace_numel state; inference keeps none."""
    T, B, I, H = 5, 3, 4, 6
    g = _ops.gates_of(mode) * H
    args = (mode, torch.randn(T, B, I), None, torch.zeros(B, H),
            torch.zeros(B, H) if mode == "LSTM" else None, torch.randn(g, I), torch.randn(g, H),
            None, None, None, False)
    ws_train = torch.ops.fused_rnn.rnn_forward(*args, True)[-1]
    ws_infer = torch.ops.fused_rnn.rnn_forward(*args, False)[-1]
    per_token = {"LSTM": 4 * H + H + H, "GRU": 4 * H + H, "RNN_TANH": H + H, "RNN_RELU": H + H}
    assert ws_train.numel() == T * B * per_token[mode] == _ops.workspace_numel(mode, T * B, H, H,
                                                                                False)
    assert ws_infer.numel() == 0


@pytest.mark.parametrize("threads", [1, 2])
def test_bitwise_deterministic(threads):
    """Same inputs, same thread count: bitwise the same outputs and gradients."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        results = []
        for _ in range(3):
            torch.manual_seed(0)
            model = fused_rnn.LSTM(8, 16, num_layers=2, bidirectional=True, dropout=0.3)
            x = torch.randn(30, 12, 8, requires_grad=True)
            out, _ = model(x)
            out.square().sum().backward()
            results.append([out.detach(), x.grad] + [p.grad for p in model.parameters()])
        for other in results[1:]:
            for a, b in zip(results[0], other):
                assert torch.equal(a, b)
    finally:
        torch.set_num_threads(old)


def test_two_python_threads_share_a_module():
    """Two threads calling one module at once get the results they would get alone."""
    torch.manual_seed(0)
    model = fused_rnn.GRU(6, 12, num_layers=2)
    inputs = [torch.randn(40, 5, 6) for _ in range(2)]
    with torch.no_grad():
        expected = [model(x)[0] for x in inputs]
    results = [[], []]

    def work(i):
        with torch.no_grad():
            for _ in range(30):
                results[i].append(model(inputs[i])[0])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(2):
        assert len(results[i]) == 30
        for r in results[i]:
            assert torch.equal(r, expected[i])
