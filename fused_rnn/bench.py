"""Benchmark engine: fused_rnn vs torch.nn on the seed models' shapes.

One definition of the shapes (SHAPES) serves the CLI (`python -m fused_rnn bench`), the
pytest-benchmark files in benchmarks/ and the README. For each shape: a parity check of fused vs
torch.nn on it, then forward and forward+backward timings of both, interleaved in one run
(warm-up, repeats, best and median), with FLOP rates against a GEMM peak measured in the same run.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import random
import statistics
import time

import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fused_rnn

from ._ops import _GATES
from ._progress import Progress


@dataclasses.dataclass(frozen=True)
class Shape:
    name: str
    mode: str  # LSTM | GRU | RNN_TANH | RNN_RELU
    T: int
    B: int
    I: int
    H: int
    layers: int = 1
    bidirectional: bool = False
    packed: bool = False  # lengths spread evenly over [min_len, T]
    min_len: int = 1
    batch_first: bool = False
    sets: tuple = ("default",)
    note: str = ""
    sweep: str = ""  # the axis ("batch", "hidden", "T") for the sweep shapes

    def lengths(self):
        if not self.packed:
            return [self.T] * self.B
        g = torch.Generator().manual_seed(0)
        return torch.randint(self.min_len, self.T + 1, (self.B,), generator=g).tolist()

    def tokens(self):
        return sum(self.lengths())

    def flops(self, backward: bool) -> float:
        """GEMM FLOPs (the bound): per layer-direction forward 2*G*(tokens*I + (tokens - r0)*H),
        r0 being the rows that the direction's first step starts from h0, which the benchmark
        leaves zero (no hx): their recurrent product is zero and needs no multiply-adds
        (fused_rnn leaves it out). Backward does about twice the forward's (dx and dW_ih; dh
        and dW_hh)."""
        gates = {"LSTM": 4, "GRU": 3}.get(self.mode, 1) * self.H
        lengths = self.lengths()
        tokens = sum(lengths)
        # Forward, every row starts at t = 0; in reverse, the longest ones at the last step.
        first_rows = [len(lengths)] + ([lengths.count(max(lengths))] if self.bidirectional else [])
        total = 0.0
        for layer in range(self.layers):
            inp = self.I if layer == 0 else self.H * len(first_rows)
            for r0 in first_rows:
                total += 2.0 * gates * (tokens * inp + (tokens - r0) * self.H)
        return total * (3 if backward else 1)


SHAPES = [
    Shape("toxic_lstm", "LSTM", 150, 32, 3, 4, batch_first=True, sets=("default", "seeds"),
          note="seed 000: Embedding(V,3) -> LSTM(3,4)"),
    Shape("imdb_lstm", "LSTM", 500, 32, 20, 64, sets=("default", "seeds"),
          note="seed 001: LSTM(20,64), padded"),
    Shape("imdb_lstm_packed", "LSTM", 500, 32, 20, 64, packed=True, min_len=50,
          sets=("default", "seeds", "packed"), note="seed 001: packed, lengths 50..500"),
    Shape("imdb_gru", "GRU", 500, 32, 20, 64, sets=("default", "gru"),
          note="seed 001 with GRU"),
    Shape("seed001_rnn", "RNN_TANH", 200, 32, 64, 32, layers=2, batch_first=True,
          sets=("default", "seeds"), note="seed 001: RNN(64,32,2 layers)"),
    Shape("tweets_bilstm", "LSTM", 40, 32, 100, 128, bidirectional=True, packed=True, min_len=5,
          sets=("default", "seeds", "packed"), note="seed 002: BiLSTM(100,128) packed"),
    Shape("mnist_rows_rnn", "RNN_TANH", 28, 100, 28, 128, layers=2, batch_first=True,
          sets=("default", "seeds"), note="seed 003: 28 rows x 28 pixels, 2 layers"),
    Shape("char_rnn", "RNN_TANH", 6, 1, 5, 3, batch_first=True, sets=("default", "seeds"),
          note="seed 003: hihell -> ihello"),
    Shape("fastrnns_lstm", "LSTM", 100, 64, 512, 512, sets=("default", "large"),
          note="torch fastrnns default"),
    Shape("small_batch_lstm", "LSTM", 200, 4, 256, 256, sets=("default", "large"),
          note="small batch"),
    # One step of a wide layer, as a decoder calls it once per generated token: the weights are
    # multiplied by a few rows once, where packing them would cost more than the product.
    Shape("decoder_gru_b1", "GRU", 1, 1, 1024, 1024, sets=("decoder",),
          note="decoder step, batch 1"),
    Shape("decoder_lstm_b8", "LSTM", 1, 8, 512, 512, sets=("decoder",),
          note="decoder step, batch 8"),
    Shape("decoder_lstm_b64", "LSTM", 1, 64, 256, 256, sets=("decoder",),
          note="decoder step, batch 64"),
    Shape("decoder_rnn_b64", "RNN_TANH", 1, 64, 1024, 1024, sets=("decoder",),
          note="decoder step, batch 64"),
]


# Sweeps around one LSTM (T=50, B=16, I=H=128): one axis varied at a time. `--shapes sweep`
# (or sweep_batch, sweep_hidden, sweep_T) runs them; `--plot` draws speedup against each axis.
SWEEP_BASE = dict(mode="LSTM", T=50, B=16, I=128, H=128)
SWEEPS = {"batch": ("B", [1, 4, 16, 64, 256]), "hidden": ("H", [16, 64, 128, 256, 512]),
          "T": ("T", [5, 20, 50, 200, 1000])}


def _sweep_shapes():
    for axis, (field, values) in SWEEPS.items():
        for value in values:
            params = {**SWEEP_BASE, field: value}
            if axis == "hidden":
                params["I"] = value
            yield Shape(f"sweep_{axis}_{value}", **params, sets=("sweep", f"sweep_{axis}"),
                        note=f"LSTM sweep over {axis}", sweep=axis)


SHAPES += list(_sweep_shapes())


def select(names_or_sets: str | None):
    """Shapes by comma-separated names or set names ('default', 'seeds', 'packed', ...)."""
    if not names_or_sets:
        names_or_sets = "default"
    wanted = [w.strip() for w in names_or_sets.split(",") if w.strip()]
    chosen = [s for s in SHAPES if s.name in wanted or any(w in s.sets for w in wanted)]
    unknown = [w for w in wanted if not any(w == s.name or w in s.sets for s in SHAPES)]
    if unknown:
        raise SystemExit(f"unknown shape or set: {', '.join(unknown)}; "
                         f"known: {', '.join(s.name for s in SHAPES)}")
    return chosen


MODES = tuple(_GATES)  # LSTM, GRU, RNN_TANH, RNN_RELU: the modes the ops take
_FLAGS = ("bidirectional", "packed", "batch_first")
_INTS = ("layers", "min_len")


def parse_shape(spec: str) -> Shape:
    """A shape of the user's own, `MODE:T,B,I,H[,layers=N][,bidirectional][,packed][,min_len=N]
    [,batch_first]` (MODE one of MODES, or RNN for RNN_TANH), e.g.
    `GRU:100,8,64,64,layers=2,bidirectional`: what `--shape` on the command line takes."""
    usage = (f"bad --shape {spec!r}: expected MODE:T,B,I,H[,layers=N][,bidirectional][,packed]"
             f"[,min_len=N][,batch_first] with MODE one of {', '.join(MODES)}")
    mode, sep, rest = spec.partition(":")
    mode = mode.strip().upper()
    mode = "RNN_TANH" if mode == "RNN" else mode
    parts = [p.strip() for p in rest.split(",") if p.strip()]
    if not sep or mode not in MODES or len(parts) < 4:
        raise SystemExit(usage)
    try:
        T, B, I, H = (int(p) for p in parts[:4])
        options = {}
        for part in parts[4:]:
            key, eq, value = part.partition("=")
            if key in _FLAGS and not eq:
                options[key] = True
            elif key in _INTS and eq:
                options[key] = int(value)
            else:
                raise ValueError(part)
    except ValueError:
        raise SystemExit(usage) from None
    if min(T, B, I, H, options.get("layers", 1), options.get("min_len", 1)) < 1:
        raise SystemExit(f"bad --shape {spec!r}: T, B, I, H, layers and min_len must be >= 1")
    if options.get("min_len", 1) > T:
        raise SystemExit(f"bad --shape {spec!r}: min_len must be <= T")
    name = f"{mode.lower()}_{T}x{B}x{I}x{H}"
    name += "".join(f"_{k}{v}" for k, v in options.items() if k in _INTS)
    name += "".join({"bidirectional": "_bi", "packed": "_packed", "batch_first": "_bf"}[k]
                    for k in _FLAGS if options.get(k))
    return Shape(name, mode, T, B, I, H, sets=("custom",), note=f"--shape {spec}", **options)


# Random shapes (`--random N`): what the named shapes leave out, drawn from these values, each
# shape's forward+backward bound between RANDOM_FLOPS' two ends so a run of 50 takes minutes.
RANDOM_DRAWS = dict(T=[1, 2, 5, 10, 20, 50, 100, 200, 400],
                    B=[1, 2, 3, 8, 16, 32, 64, 128, 256],
                    size=[1, 4, 16, 32, 64, 100, 128, 256, 300, 512, 1024],  # I and H
                    layers=[1, 1, 2, 3])
RANDOM_FLOPS = (1e5, 1e9)


def random_shapes(n: int, seed: int = 0, flops=RANDOM_FLOPS):
    """`n` shapes drawn at random (reproducibly for a seed): any mode, T, B, I, H and layers of
    RANDOM_DRAWS, bidirectional (30%), packed (25%, lengths from T/4 up), batch-first (30%). Named
    `random<k>_` and then as parse_shape names them; set "random"."""
    rng = random.Random(seed)
    shapes = []
    while len(shapes) < n:
        mode = rng.choice(MODES)
        T, B = rng.choice(RANDOM_DRAWS["T"]), rng.choice(RANDOM_DRAWS["B"])
        I, H = rng.choice(RANDOM_DRAWS["size"]), rng.choice(RANDOM_DRAWS["size"])
        layers = rng.choice(RANDOM_DRAWS["layers"])
        spec = f"{mode}:{T},{B},{I},{H}" + f",layers={layers}" * (layers > 1)
        spec += ",bidirectional" * (rng.random() < 0.3)
        spec += f",packed,min_len={max(1, T // 4)}" * (rng.random() < 0.25 and B > 1)
        spec += ",batch_first" * (rng.random() < 0.3)
        shape = parse_shape(spec)
        if flops[0] <= shape.flops(True) <= flops[1]:
            shapes.append(dataclasses.replace(
                shape, name=f"random{len(shapes)}_{shape.name}", sets=("random",),
                note=f"--random, seed {seed}: {spec}"))
    return shapes


def build(shape: Shape, device, dtype=torch.float32, seed=0):
    """(torch.nn module, fused module with the same weights, function making the input)."""
    cls = {"LSTM": "LSTM", "GRU": "GRU"}.get(shape.mode, "RNN")
    kwargs = dict(num_layers=shape.layers, bidirectional=shape.bidirectional,
                  batch_first=shape.batch_first, device=device, dtype=dtype)
    if cls == "RNN":
        kwargs["nonlinearity"] = "relu" if shape.mode == "RNN_RELU" else "tanh"
    torch.manual_seed(seed)
    ref = getattr(torch.nn, cls)(shape.I, shape.H, **kwargs)
    fused = getattr(fused_rnn, cls)(shape.I, shape.H, **kwargs)
    fused.load_state_dict(ref.state_dict())
    dims = (shape.B, shape.T, shape.I) if shape.batch_first else (shape.T, shape.B, shape.I)
    x = torch.randn(*dims, device=device, dtype=dtype)
    lengths = shape.lengths()

    def make_input(requires_grad):
        """(module input, the leaf tensor behind it)."""
        leaf = x.detach().requires_grad_(requires_grad)
        if shape.packed:
            return pack_padded_sequence(leaf, lengths, batch_first=shape.batch_first,
                                        enforce_sorted=False), leaf
        return leaf, leaf

    return ref, fused, make_input


def _outputs(result):
    out, hidden = result
    out = out if torch.is_tensor(out) else out.data  # PackedSequence
    hidden = list(hidden) if isinstance(hidden, tuple) else [hidden]
    return [out] + hidden


def parity(shape: Shape, device) -> float:
    """Largest relative difference of fused vs torch.nn on this shape (fp64): outputs, states and
    every gradient."""
    ref, fused, make_input = build(shape, device, torch.float64)
    worst = 0.0
    results = []
    for m in (ref, fused):
        inp, leaf = make_input(True)
        outs = _outputs(m(inp))
        loss = sum(o.sin().sum() for o in outs)
        grads = torch.autograd.grad(loss, [leaf] + list(m.parameters()))
        results.append(outs + list(grads))
    for a, b in zip(*results):
        scale = a.abs().max().item() or 1.0
        worst = max(worst, (a - b).abs().max().item() / scale)
    return worst


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _step(module, make_input, backward):
    if backward:
        outs = _outputs(module(make_input(True)[0]))
        sum(o.sum() for o in outs).backward()
    else:
        with torch.no_grad():
            module(make_input(False)[0])


class WithoutCudnn:
    """A torch.nn module called with cuDNN disabled: torch's native CUDA RNN kernels (a fused
    cell kernel per step). Its backward runs the same native kernels: autograd recorded them."""

    def __init__(self, module):
        self.module = module

    def __call__(self, *args):
        with torch.backends.cudnn.flags(enabled=False):
            return self.module(*args)


def contenders(ref, fused, device):
    """What is timed: torch.nn ("torch"; cuDNN on a GPU), fused_rnn, and on a GPU torch.nn with
    cuDNN disabled ("torch_native")."""
    impls = {"torch": ref, "fused": fused}
    if torch.device(device).type == "cuda":
        impls["torch_native"] = WithoutCudnn(ref)
    return impls


def time_pair(shape: Shape, device, repeats=5, warmup=2, min_time=0.05, dtype=torch.float32):
    """Interleaved timings (seconds per call) of torch.nn and fused (and on a GPU torch.nn
    without cuDNN), both in `dtype`: {impl: {pass: [times]}}."""
    ref, fused, make_input = build(shape, device, dtype)
    impls = contenders(ref, fused, device)
    times = {impl: {"fwd": [], "fwd_bwd": []} for impl in impls}
    for pass_name, backward in (("fwd", False), ("fwd_bwd", True)):
        for impl, module in impls.items():
            for _ in range(warmup):
                _step(module, make_input, backward)
        # Calls per timed sample, so each sample lasts at least min_time.
        _sync(device)
        start = time.perf_counter()
        _step(fused, make_input, backward)
        _sync(device)
        once = max(time.perf_counter() - start, 1e-6)
        inner = max(1, int(min_time / once))
        for _ in range(repeats):
            for impl, module in impls.items():
                _sync(device)
                start = time.perf_counter()
                for _ in range(inner):
                    _step(module, make_input, backward)
                _sync(device)
                times[impl][pass_name].append((time.perf_counter() - start) / inner)
    return times


def gemm_peak(device, dtype=torch.float32, n=1024, repeats=5) -> float:
    """GFLOP/s of a square matmul on this device, measured now."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2.0 * n ** 3 / best / 1e9


DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16,
          "float16": torch.float16}


def peak_dtype(dtype: str) -> str:
    """The dtype whose GEMM peak bounds a run in `dtype`: fp64's own (half fp32's rate on this
    CPU: measured in fp32, a float64 run's bound was half what it is), fp32 otherwise
    (fused_rnn's fp16/bf16 math is fp32)."""
    return "float64" if dtype == "float64" else "float32"


def run(shapes, device="cpu", repeats=5, progress=True, check=True, dtype="float32"):
    """Runs the benchmark; returns a JSON-able dict. The GEMM peak is the best of measurements
    before and after every shape: one taken while the machine was busy elsewhere made fractions
    of it above 100% (a shared 2-core host swung 91-176 GFLOP/s within minutes). `dtype` (a key
    of DTYPES) is what both modules run in; the parity check is fp64 whatever it is, and the
    peak peak_dtype(dtype)'s."""
    peak_name = peak_dtype(dtype)
    peak_in = DTYPES[peak_name]
    peak = gemm_peak(device, peak_in)
    rows, timed = [], []
    bar = Progress(len(shapes), progress)
    for shape in shapes:
        row = {"shape": dataclasses.asdict(shape), "name": shape.name, "tokens": shape.tokens()}
        if check:
            row["parity_max_rel_diff"] = parity(shape, device)
        timed.append(time_pair(shape, device, repeats=repeats, dtype=DTYPES[dtype]))
        peak = max(peak, gemm_peak(device, peak_in))
        rows.append(row)
        bar.step(shape.name)
    for shape, row, times in zip(shapes, rows, timed):
        for pass_name in ("fwd", "fwd_bwd"):
            flops = shape.flops(pass_name == "fwd_bwd")
            entry = {}
            for impl in times:
                ts = times[impl][pass_name]
                best, median = min(ts), statistics.median(ts)
                entry[impl] = {"best_ms": best * 1e3, "median_ms": median * 1e3,
                               "gflops": flops / best / 1e9,
                               "peak_fraction": flops / best / 1e9 / peak}
            entry["speedup"] = entry["torch"]["best_ms"] / entry["fused"]["best_ms"]
            if "torch_native" in entry:
                entry["speedup_native"] = (entry["torch_native"]["best_ms"] /
                                           entry["fused"]["best_ms"])
            entry["bound_ms"] = flops / (peak * 1e9) * 1e3
            row[pass_name] = entry
    return {
        "device": device,
        "dtype": dtype,
        "machine": machine_description(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "gemm_peak_gflops": peak,
        "gemm_peak_dtype": peak_name,
        "date": time.strftime("%Y-%m-%d"),
        "results": rows,
    }


def machine_description(device):
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name()
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} threads"


def format_table(report) -> str:
    """The results as a Markdown table. On a GPU "torch" is torch.nn with cuDNN, and two more
    columns give the speedups over torch.nn with cuDNN disabled ("native")."""
    native = any("speedup_native" in row["fwd"] for row in report["results"])
    lines = [
        f"fused_rnn vs torch.nn on {report['device']} ({report['machine']}), "
        f"{report.get('dtype', 'float32')}, torch "
        f"{report['torch']}, {report['date']}; GEMM peak {report['gemm_peak_gflops']:.1f} GFLOP/s"
        f" ({report.get('gemm_peak_dtype', 'float32')})",
        "",
        "| shape | T,B,I,H | parity | fwd torch ms | fwd fused ms | fwd speedup | "
        "fwd+bwd torch ms | fwd+bwd fused ms | fwd+bwd speedup | "
        + ("fwd vs native | fwd+bwd vs native | " if native else "")
        + "fused GFLOP/s | of peak | bound ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|" + ("---|---|" if native else ""),
    ]
    for row in report["results"]:
        s = row["shape"]
        f, fb = row["fwd"], row["fwd_bwd"]
        dims = f"{s['T']},{s['B']},{s['I']},{s['H']}"
        if s["layers"] > 1:
            dims += f" x{s['layers']}L"
        if s["bidirectional"]:
            dims += " bi"
        if s["packed"]:
            dims += " packed"
        par = row.get("parity_max_rel_diff")
        vs_native = (f"{f['speedup_native']:.2f}x | {fb['speedup_native']:.2f}x | "
                     if native else "")
        lines.append(
            f"| {row['name']} | {dims} | {'-' if par is None else f'{par:.0e}'} | "
            f"{f['torch']['best_ms']:.3f} | {f['fused']['best_ms']:.3f} | {f['speedup']:.2f}x | "
            f"{fb['torch']['best_ms']:.3f} | {fb['fused']['best_ms']:.3f} | "
            f"{fb['speedup']:.2f}x | {vs_native}{fb['fused']['gflops']:.2f} | "
            f"{fb['fused']['peak_fraction'] * 100:.1f}% | {fb['bound_ms']:.3f} |")
    return "\n".join(lines + ["", speedup_summary(report)])


def speedup_summary(report) -> str:
    """One line: the lowest (with its shape) and the median speedup, forward and forward+backward
    (over torch.nn with cuDNN on a GPU)."""
    parts = []
    for pass_name, label in (("fwd", "forward"), ("fwd_bwd", "forward+backward")):
        ratios = sorted((row[pass_name]["speedup"], row["name"]) for row in report["results"])
        median = statistics.median([r for r, _ in ratios])
        parts.append(f"{label} lowest {ratios[0][0]:.2f}x ({ratios[0][1]}), "
                     f"median {median:.2f}x")
    return f"speedup over torch.nn in {len(report['results'])} shapes: " + "; ".join(parts)


def plot(report, path):
    """Bars of the speedup per shape, and for each sweep axis in the report a curve of the
    speedup against it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["results"]
    shapes = [r for r in rows if not r["shape"].get("sweep")]
    axes_in = [a for a in SWEEPS if any(r["shape"].get("sweep") == a for r in rows)]
    panels = (1 if shapes else 0) + len(axes_in)
    fig, axs = plt.subplots(1, panels, figsize=(max(6, len(shapes) * 0.9) + 4 * len(axes_in), 4),
                            squeeze=False)
    axs = list(axs[0])
    if shapes:
        ax = axs.pop(0)
        xs = range(len(shapes))
        ax.bar([x - 0.2 for x in xs], [r["fwd"]["speedup"] for r in shapes], 0.4, label="forward")
        ax.bar([x + 0.2 for x in xs], [r["fwd_bwd"]["speedup"] for r in shapes], 0.4,
               label="forward+backward")
        ax.axhline(1.0, color="k", linewidth=0.8)
        ax.set_xticks(list(xs))
        ax.set_xticklabels([r["name"] for r in shapes], rotation=30, ha="right")
        ax.set_ylabel("speedup over torch.nn (x)")
        ax.set_title("benchmark shapes")
        ax.legend()
    base = ", ".join(f"{k}={v}" for k, v in SWEEP_BASE.items() if k != "mode")
    for ax, axis in zip(axs, axes_in):
        field = SWEEPS[axis][0]
        sweep = sorted((r for r in rows if r["shape"].get("sweep") == axis),
                       key=lambda r: r["shape"][field])
        values = [r["shape"][field] for r in sweep]
        ax.plot(values, [r["fwd"]["speedup"] for r in sweep], "o-", label="forward")
        ax.plot(values, [r["fwd_bwd"]["speedup"] for r in sweep], "s-", label="forward+backward")
        ax.axhline(1.0, color="k", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_xticks(values)
        ax.set_xticklabels([str(v) for v in values])
        ax.set_xticks([], minor=True)  # the log scale's own minor ticks would label themselves
        ax.set_xlabel(f"{axis} ({field}; I=H for hidden)" if axis == "hidden" else f"{axis} ({field})")
        ax.set_ylabel("speedup over torch.nn (x)")
        ax.set_title(f"LSTM {base}, {axis} varied")
        ax.legend()
    fig.suptitle(f"fused_rnn vs torch.nn, {report['machine']}, {report['date']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def save_json(report, path):
    with open(path, "w") as f:
        json.dump(report, f, indent=2)


# ---- training steps of the seed models (fused_rnn.models), torch.nn vs fused


def time_model_steps(name: str, repeats: int = 5, warmup: int = 2, min_time: float = 0.05):
    """Seconds per training step (forward, backward, optimizer step) of a seed model on its
    default (no-download) data, torch.nn and fused from the same weights, interleaved."""
    from . import train as trainer

    tasks = {impl: trainer.make_task(name, impl=impl) for impl in ("torch", "fused")}
    tasks["fused"].model.load_state_dict(tasks["torch"].model.state_dict())
    batch = max(tasks["torch"].train_batches, key=lambda b: b[1].numel())
    steps = {}
    for impl, task in tasks.items():
        opt = task.optimizer(task.model.parameters())

        def step(task=task, opt=opt):
            opt.zero_grad()
            task.loss_fn(task.model(*batch[0]), batch[1]).backward()
            opt.step()

        steps[impl] = step
    for step in steps.values():
        for _ in range(warmup):
            step()
    start = time.perf_counter()
    steps["fused"]()
    inner = max(1, int(min_time / max(time.perf_counter() - start, 1e-6)))
    times = {impl: [] for impl in steps}
    for _ in range(repeats):
        for impl, step in steps.items():
            start = time.perf_counter()
            for _ in range(inner):
                step()
            times[impl].append((time.perf_counter() - start) / inner)
    return times


def run_models(names, repeats=5, progress=True):
    bar = Progress(len(names), progress)
    rows = []
    for name in names:
        times = time_model_steps(name, repeats)
        row = {"model": name}
        for impl in ("torch", "fused"):
            row[impl] = {"best_ms": min(times[impl]) * 1e3,
                         "median_ms": statistics.median(times[impl]) * 1e3}
        row["speedup"] = row["torch"]["best_ms"] / row["fused"]["best_ms"]
        rows.append(row)
        bar.step(name)
    return rows


def format_models_table(rows) -> str:
    lines = ["| model | train step torch ms | train step fused ms | speedup |",
             "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['torch']['best_ms']:.3f} | {r['fused']['best_ms']:.3f} "
                     f"| {r['speedup']:.2f}x |")
    return "\n".join(lines)
