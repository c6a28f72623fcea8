"""What the installed build holds."""

from __future__ import annotations

import torch

from . import _build_info

OPS = ("rnn_forward", "rnn_backward", "rnn_backward_consume")


def has_kernel(op: str, device: str) -> bool:
    """Whether the built extension registered a kernel of `fused_rnn::op` for device ('CPU'/'CUDA')."""
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"fused_rnn::{op}", device)


def backend_info() -> dict:
    """The build: which devices have kernels, CUDA architectures, the torch it was built with."""
    return {
        "cpu": all(has_kernel(op, "CPU") for op in OPS),
        "cuda": all(has_kernel(op, "CUDA") for op in OPS),
        "cpu_capability": _build_info.CPU_CAPABILITY,  # AVX512, AVX2 or DEFAULT (setup.py)
        "cuda_compiled": _build_info.CUDA,
        "cuda_archs": _build_info.CUDA_ARCHS,
        "built_with_torch": _build_info.TORCH_VERSION,
        "built_with_cuda": _build_info.TORCH_CUDA_VERSION,
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
    }


def empty_cache() -> int:
    """Frees the CPU buffers that fused_rnn keeps for reuse (csrc/cpu/buffer_pool.h: the large
    buffers of a layer call, which it would otherwise take as freshly faulted pages on every
    call); returns how many bytes that released. At most 512 MB are ever kept."""
    return torch.ops.fused_rnn.empty_cache()


def cached_bytes() -> int:
    """Bytes of CPU buffers that fused_rnn holds for reuse now."""
    return torch.ops.fused_rnn.cache_bytes()
