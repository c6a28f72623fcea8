"""The CUDA kernels. Without a GPU only the build checks run (CI compiles the CUDA sources on
every run); on a GPU the parity suite runs against torch.nn with cuDNN, without cuDNN, and
against fused_rnn's own CPU path, and fp16/bf16 against fp32."""

import os

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fused_rnn
from conftest import assert_low_precision_close, assert_same_run, make_pair
from fused_rnn.info import OPS, has_kernel

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.mark.skipif(os.environ.get("FUSED_RNN_REQUIRE_CUDA_BUILD", "0") in ("", "0"),
                    reason="set FUSED_RNN_REQUIRE_CUDA_BUILD=1 (CI does) to require CUDA kernels")
@pytest.mark.parametrize("op", OPS)
def test_every_op_has_a_cuda_kernel(op):
    """CI builds with nvcc and a CUDA torch: every op must have its CUDA kernel registered."""
    assert fused_rnn.backend_info()["cuda_compiled"]
    assert has_kernel(op, "CUDA"), f"fused_rnn::{op} has no CUDA kernel in this build"


CONFIGS = [("LSTM", 0), ("LSTM", 3), ("GRU", 0), ("RNN_TANH", 0), ("RNN_RELU", 0)]


def _pair_on(mode, proj, device, dtype, **kw):
    return make_pair(mode, 5, 6, device=device, dtype=dtype, num_layers=2, bidirectional=True,
                     **({"proj_size": proj} if proj else {}), **kw)


@needs_gpu
@pytest.mark.parametrize("cudnn", [True, False], ids=["cudnn", "native"])
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("mode,proj", CONFIGS)
def test_against_torch_cuda(mode, proj, packed, cudnn, cuda_loop):
    ref, fused = _pair_on(mode, proj, "cuda", torch.float64)
    x = torch.randn(7, 4, 5, device="cuda", dtype=torch.float64, requires_grad=True)

    def call(m):
        inp = pack_padded_sequence(x, [3, 7, 1, 5], enforce_sorted=False) if packed else x
        return m(inp)

    with torch.backends.cudnn.flags(enabled=cudnn):
        assert_same_run(ref, fused, call, [x])


@needs_gpu
@pytest.mark.parametrize("mode,proj", CONFIGS)
def test_cuda_equals_cpu_path(mode, proj, cuda_loop):
    _, fused_cpu = _pair_on(mode, proj, "cpu", torch.float64)
    _, fused_gpu = _pair_on(mode, proj, "cuda", torch.float64)
    fused_gpu.load_state_dict(fused_cpu.state_dict())
    x = torch.randn(7, 4, 5, dtype=torch.float64)
    out_cpu = fused_cpu(x)[0]
    out_gpu = fused_gpu(x.cuda())[0]
    torch.testing.assert_close(out_gpu.cpu(), out_cpu, atol=1e-8, rtol=1e-7)


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode,proj", CONFIGS)
def test_low_precision_against_fp32(mode, proj, dtype, cuda_loop):
    assert_low_precision_close(mode, dtype, "cuda", **({"proj_size": proj} if proj else {}))


@needs_gpu
@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_block_loop_with_weight_in_global_memory(mode, monkeypatch):
    """FUSED_RNN_CUDA_LOOP=block on a layer whose recurrent weight does not fit in shared memory
    (fp64, H=128: 512 KB): the kernel reads it from global memory instead."""
    monkeypatch.setenv("FUSED_RNN_CUDA_LOOP", "block")
    ref, fused = make_pair(mode, 16, 128, device="cuda", dtype=torch.float64)
    x = torch.randn(9, 3, 16, device="cuda", dtype=torch.float64, requires_grad=True)
    assert_same_run(ref, fused, lambda m: m(x), [x])


@needs_gpu
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("mode,hidden,batch", [
    ("LSTM", 64, 8),       # one weight column per thread, 64 rows each (float4 reads of h)
    ("LSTM", 50, 5),       # 50 rows: the scalar reads
    ("GRU", 64, 6),        # backward: W_hh [192, 64], k split over 3 groups of threads
    ("RNN_TANH", 128, 4),  # k split over 2 groups
    ("LSTM", 4, 3),        # one row per thread
    ("RNN_RELU", 32, 300),  # several rows per block (132 SMs), k split over 4 groups
    ("LSTM", 16, 200),     # several rows per block, one group
])
def test_block_loop_with_weight_in_registers(mode, hidden, batch, packed, monkeypatch):
    """fp32 layers whose recurrent weight the block loop holds in registers (RegisterTile in
    block_loop.cuh), two layers (the second's input is the first's output), against torch.nn."""
    monkeypatch.setenv("FUSED_RNN_CUDA_LOOP", "block")
    ref, fused = make_pair(mode, 7, hidden, device="cuda", dtype=torch.float32, num_layers=2)
    x = torch.randn(9, batch, 7, device="cuda", requires_grad=True)
    lengths = torch.randint(1, 10, (batch,)).tolist()

    def call(m):
        return m(pack_padded_sequence(x, lengths, enforce_sorted=False) if packed else x)

    assert_same_run(ref, fused, call, [x], dtype=torch.float32)


@needs_gpu
def test_cuda_loop_setting_is_checked(monkeypatch):
    monkeypatch.setenv("FUSED_RNN_CUDA_LOOP", "fastest")
    fused = fused_rnn.LSTM(5, 6).cuda()
    with pytest.raises(RuntimeError, match="FUSED_RNN_CUDA_LOOP must be auto, block or steps"):
        fused(torch.randn(3, 2, 5, device="cuda"))


@needs_gpu
def test_mixed_devices_error():
    fused = fused_rnn.LSTM(5, 6).cuda()
    with pytest.raises(RuntimeError):
        fused(torch.randn(3, 2, 5))


def test_cuda_tensor_on_cpu_only_build_names_the_fix(monkeypatch):
    from fused_rnn import _ops

    monkeypatch.setattr(_ops, "_has_cuda_kernels", lambda: False)
    with pytest.raises(RuntimeError, match="built without CUDA kernels.*FUSED_RNN_CPU_ONLY"):
        _ops.check_build(torch.device("cuda"))
    _ops.check_build(torch.device("cpu"))


@needs_gpu
@pytest.mark.parametrize("mode,proj", CONFIGS)
def test_autocast_like_torch(mode, proj):
    """Under CUDA autocast torch.nn's RNNs run in fp16; so do the fused ones."""
    ref, fused = _pair_on(mode, proj, "cuda", torch.float32)
    x = torch.randn(7, 4, 5, device="cuda")
    with torch.autocast("cuda", dtype=torch.float16):
        out_ref, out_fused = ref(x)[0], fused(x)[0]
    assert out_fused.dtype == out_ref.dtype
    torch.testing.assert_close(out_fused.float(), out_ref.float(), atol=1e-2, rtol=1e-2)


def test_cpu_autocast_runs_in_input_dtype():
    fused = fused_rnn.LSTM(5, 6)
    x = torch.randn(7, 4, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fused(x)[0]
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, fused(x)[0])
