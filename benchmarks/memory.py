"""Peak memory of one forward+backward, torch.nn vs fused_rnn, on the benchmark shapes.

    python benchmarks/memory.py [--shapes default]

Each (shape, implementation) runs in a fresh process: the peak resident set size (ru_maxrss)
after building the model and input is the baseline, and the growth of that peak over one
forward+backward is what the pass needed (activations, workspace, gradients). RSS counts pages,
so small shapes show the allocator's granularity more than the workspace.
"""

import argparse
import json
import subprocess
import sys

CHILD = r"""
import resource, sys, torch
from fused_rnn import bench
torch.set_num_threads(1)
shape = next(s for s in bench.SHAPES if s.name == sys.argv[1])
ref, fused, make_input = bench.build(shape, "cpu")
module = {"torch": ref, "fused": fused}[sys.argv[2]]
inp, leaf = make_input(True)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
bench._step(module, make_input, True)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((after - before) / 1024)
"""


def measure(shape, impl):
    out = subprocess.run([sys.executable, "-c", CHILD, shape, impl], capture_output=True,
                         text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main():
    from fused_rnn import bench

    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", default="default")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    rows = []
    print("| shape | torch.nn peak MB | fused peak MB | fused / torch |")
    print("|---|---|---|---|")
    for shape in bench.select(args.shapes):
        t, f = measure(shape.name, "torch"), measure(shape.name, "fused")
        rows.append({"shape": shape.name, "torch_mb": t, "fused_mb": f})
        ratio = f"{f / t:.2f}" if t > 0.5 else "-"
        print(f"| {shape.name} | {t:.1f} | {f:.1f} | {ratio} |", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
