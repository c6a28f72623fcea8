"""pytest-benchmark over fused_rnn.bench.SHAPES: torch.nn and fused side by side per shape.

    python -m pytest benchmarks -q --benchmark-group-by=param:shape

Not part of the test command (timings on a shared 2-core machine are not tests); the CLI,
`python -m fused_rnn bench`, is the main benchmark.
"""

import pytest

from fused_rnn import bench

SHAPES = bench.select("default")


@pytest.mark.parametrize("impl", ["torch", "fused"])
@pytest.mark.parametrize("pass_name", ["fwd", "fwd_bwd"])
@pytest.mark.parametrize("shape", SHAPES, ids=[s.name for s in SHAPES])
def test_rnn(benchmark, shape, pass_name, impl):
    ref, fused, make_input = bench.build(shape, "cpu")
    module = {"torch": ref, "fused": fused}[impl]
    benchmark.group = f"{shape.name} {pass_name}"
    benchmark(bench._step, module, make_input, pass_name == "fwd_bwd")
