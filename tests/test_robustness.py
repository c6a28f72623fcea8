"""Memory, determinism and thread safety."""

import resource
import threading

import torch.utils.checkpoint

import pytest
import torch

import fused_rnn
from conftest import MODES, make_pair, num_threads
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


def test_buffer_pool_reuses_and_releases():
    """The large buffers of a call come back for the next one (fused_rnn.cached_bytes), a buffer
    still held is never handed out again, pooled tensors behave like any (resize_, in-place
    ops, numpy), and empty_cache releases the pool."""
    model = fused_rnn.LSTM(32, 64, num_layers=2)
    x = torch.randn(50, 16, 32, requires_grad=True)

    def step():
        out, (h, c) = model(x)
        (out.sum() + h.sum()).backward()
        return out

    fused_rnn.empty_cache()
    assert fused_rnn.cached_bytes() == 0
    step()
    cached = fused_rnn.cached_bytes()
    assert cached > 0  # the workspaces, outputs and gradients went back
    for _ in range(5):
        step()
    assert fused_rnn.cached_bytes() <= 2 * cached  # reused, not accumulated
    kept = step().detach()  # 50 x 16 x 64 floats: a pooled buffer, still held
    snapshot = kept.clone()
    for _ in range(3):
        step()
    assert torch.equal(kept, snapshot)  # nobody else wrote into it
    kept.add_(1).resize_(60, 16, 64)  # a pooled tensor resized: the pool allocates and copies
    torch.testing.assert_close(kept[:50], snapshot + 1)
    assert kept.numpy().shape == (60, 16, 64)
    del kept
    assert fused_rnn.empty_cache() > 0
    assert fused_rnn.cached_bytes() == 0
    torch.testing.assert_close(step(), model(x)[0])  # and it runs on after


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_copies_pooled(dtype):
    """fp16/bf16 on the CPU run on fp32 copies (csrc/cpu/rnn_cpu.cpp) and compute fp32 results,
    which come from the buffer pool and go back to it, so the next call reuses them instead of
    faulting in fresh pages; the weights, where the products read them in place (a decoder's
    step: CPUBackend::kHalfWeights), get no copy at all."""
    model = fused_rnn.LSTM(256, 512, dtype=dtype)
    weights = model.weight_ih_l0.numel() + model.weight_hh_l0.numel()
    x = torch.randn(1, 1, 256, dtype=dtype)
    fused_rnn.empty_cache()
    with torch.no_grad():
        model(x)
    assert fused_rnn.cached_bytes() < 4 * model.weight_ih_l0.numel()  # no fp32 weight copies
    xb = torch.randn(1, 1, 256, dtype=dtype, requires_grad=True)
    for _ in range(2):  # (the first's weight gradients become .grad and stay out of the pool)
        model(xb)[0].sum().backward()  # the backward's fp32 weight gradients, then copied
    cached = fused_rnn.cached_bytes()
    assert cached >= 4 * weights
    for _ in range(3):
        model(xb)[0].sum().backward()
    assert fused_rnn.cached_bytes() == cached  # the same blocks again


def test_buffer_pool_across_threads():
    """Buffers allocated on one thread and freed on another (autograd's, a DataLoader's)."""
    model = fused_rnn.GRU(32, 64)
    x = torch.randn(40, 8, 32)
    outs = []

    def work():
        for _ in range(20):
            outs.append(model(x)[0])
            if len(outs) > 4:
                outs.pop(0)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    torch.testing.assert_close(outs[-1], model(x)[0])


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


def _backward_ops(run):
    """Which fused_rnn backward ops `run()` called (the profiler records every dispatcher op)."""
    with torch.profiler.profile() as prof:
        run()
    return sorted({e.name for e in prof.events() if e.name.startswith("fused_rnn::rnn_backward")})


def _grads(module, x, retain_graph=False, times=1):
    module.zero_grad()
    x.grad = None
    out, hidden = module(x)
    hidden = hidden if isinstance(hidden, tuple) else (hidden,)
    loss = out.sin().sum() + sum(h.cos().sum() for h in hidden)
    for _ in range(times):
        loss.backward(retain_graph=retain_graph)
    return [x.grad.clone()] + [p.grad.clone() for p in module.parameters()]


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("retain", [False, True], ids=["freed", "retain_graph"])
def test_backward_overwrites_workspace_only_when_graph_is_freed(mode, retain):
    """The backward pass writes its gate gradients over the saved workspace (no [N, gates]
    buffer) when the graph is freed after it; with retain_graph=True it leaves the workspace
    intact, so a second backward through the same graph accumulates the same gradients again."""
    ref, fused = make_pair(mode, 4, 6, num_layers=2, bidirectional=True)
    x = torch.randn(7, 3, 4, dtype=torch.float64, requires_grad=True)
    times = 2 if retain else 1
    expected = _grads(ref, x, retain, times)
    ops = _backward_ops(lambda: _grads(fused, x, retain, times))
    assert ops == (["fused_rnn::rnn_backward"] if retain else ["fused_rnn::rnn_backward_consume"])
    for a, b in zip(expected, _grads(fused, x, retain, times)):
        torch.testing.assert_close(b, a)


@pytest.mark.parametrize("hold", ["workspace", "view", "storage"])
def test_backward_leaves_a_workspace_someone_holds_intact(hold):
    """A caller of the op that keeps the returned workspace (or a view of it, or its storage)
    still sees what the forward wrote after backward: the plain op runs."""
    T, B, I, H = 5, 3, 4, 6
    x = torch.randn(T, B, I, requires_grad=True)
    w_ih, w_hh = torch.randn(4 * H, I, requires_grad=True), torch.randn(4 * H, H, requires_grad=True)
    output, *_, workspace = torch.ops.fused_rnn.rnn_forward(
        "LSTM", x, None, torch.zeros(B, H), torch.zeros(B, H), w_ih, w_hh, None, None, None,
        False, True)
    kept = {"workspace": workspace, "view": workspace[1:], "storage": workspace.untyped_storage()}[hold]
    before = workspace.clone()
    del workspace
    assert _backward_ops(lambda: output.sum().backward()) == ["fused_rnn::rnn_backward"]
    seen = kept if hold == "workspace" else (
        torch.cat([before[:1], kept]) if hold == "view" else torch.tensor([], dtype=before.dtype).set_(kept))
    torch.testing.assert_close(seen, before, rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
@pytest.mark.parametrize("wrap", ["checkpoint", "save_on_cpu"])
def test_saved_tensor_hooks(mode, wrap):
    """Non-reentrant activation checkpointing and save_on_cpu (saved-tensor hooks) give torch.nn's
    gradients, with the workspace consumed or not."""
    ref, fused = make_pair(mode, 4, 6, num_layers=2)
    x = torch.randn(7, 3, 4, dtype=torch.float64, requires_grad=True)

    def grads(module):
        module.zero_grad()
        x.grad = None
        if wrap == "checkpoint":
            out = torch.utils.checkpoint.checkpoint(lambda t: module(t)[0], x, use_reentrant=False)
        else:
            with torch.autograd.graph.save_on_cpu():
                out = module(x)[0]
        out.sin().sum().backward()
        return [x.grad.clone()] + [p.grad.clone() for p in module.parameters()]

    for a, b in zip(grads(ref), grads(fused)):
        torch.testing.assert_close(b, a)


@pytest.mark.parametrize("threads", [1, 2])
def test_bitwise_deterministic(threads):
    """Same inputs, same thread count: bitwise the same outputs and gradients."""
    with num_threads(threads):
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


@pytest.mark.parametrize("mode", list(MODES))
def test_concurrent_post_loop_products(mode):
    """A small-hidden layer over 20,000 tokens: its backward runs the input side's and the
    recurrent side's products on two threads, the weight gradients by ATen's product there
    (above the small kernel's size): equal to torch.nn's, and none records autograd history."""
    ref, fused = make_pair(mode, 3, 4, dtype=torch.float64)
    x = torch.randn(500, 40, 3, dtype=torch.float64, requires_grad=True)
    grads = []
    for m in (ref, fused):
        x.grad = None
        out = m(x)[0]
        out.square().sum().backward()
        grads.append([x.grad] + [p.grad for p in m.parameters()])
    for g_ref, g in zip(*grads):
        assert not g.requires_grad and g.grad_fn is None
        torch.testing.assert_close(g, g_ref)
