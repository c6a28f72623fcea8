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
        "cpu_avx2": _build_info.CPU_AVX2,
        "cuda_compiled": _build_info.CUDA,
        "cuda_archs": _build_info.CUDA_ARCHS,
        "built_with_torch": _build_info.TORCH_VERSION,
        "built_with_cuda": _build_info.TORCH_CUDA_VERSION,
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
    }
