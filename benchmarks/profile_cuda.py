"""Where the GPU time of a benchmark shape goes: each kernel's device time (torch.profiler) for
fused_rnn and torch.nn (cuDNN), forward (no_grad) and forward+backward, per call.

    python benchmarks/profile_cuda.py imdb_lstm,toxic_lstm [--repeats 5]

The kernel rows say how much of a call is the time loop (fused_rnn's forward_block_loop /
backward_block_loop, cuDNN's RNN kernels) and how much the GEMMs and copies around it; the
difference between the sum and the call's wall time is host overhead (and the profiler's).
scripts/ncu_block_loop.sh runs it, then the loop's kernels under Nsight Compute for their stall
reasons.
"""

from __future__ import annotations

import argparse
import collections
import time

import torch
from torch.profiler import ProfilerActivity, profile

from fused_rnn import bench


def kernel_times(fn, repeats):
    """{kernel name: (launches per call, device us per call)}, wall us per call."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(repeats):
            fn()
        torch.cuda.synchronize()
    wall = (time.perf_counter() - start) / repeats * 1e6
    totals = collections.defaultdict(lambda: [0, 0.0])
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            t = totals[e.name[:70]]
            t[0] += 1
            t[1] += e.device_time_total if hasattr(e, "device_time_total") else e.cuda_time_total
    return {k: (n / repeats, us / repeats) for k, (n, us) in totals.items()}, wall


def main():
    p = argparse.ArgumentParser()
    p.add_argument("shapes", nargs="?", default="imdb_lstm,toxic_lstm")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    torch.backends.cudnn.allow_tf32 = False
    for shape in bench.select(args.shapes):
        ref, fused, make_input = bench.build(shape, "cuda")
        for name, module in (("torch", ref), ("fused", fused)):
            for backward in (False, True):
                times, wall = kernel_times(
                    lambda: bench._step(module, make_input, backward), args.repeats)
                total = sum(us for _, us in times.values())
                print(f"\n{shape.name} {name} {'fwd+bwd' if backward else 'fwd'}: "
                      f"wall {wall:.0f} us, kernels {total:.0f} us")
                for k, (n, us) in sorted(times.items(), key=lambda kv: -kv[1][1])[:8]:
                    print(f"  {us:9.1f} us  x{n:<6.0f} {k}")


if __name__ == "__main__":
    main()
