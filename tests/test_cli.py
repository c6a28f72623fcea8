"""The command line as a user runs it: bench (table, JSON, plot, --models) and its errors."""

import json
import subprocess
import sys

import pytest
import torch

from fused_rnn import bench


def run(*args):
    return subprocess.run([sys.executable, "-m", "fused_rnn", *args], capture_output=True,
                          text=True)


def test_bench_table_json_plot(tmp_path):
    out = run("bench", "--shapes", "char_rnn,toxic_lstm", "--repeats", "1", "--json",
              str(tmp_path / "r.json"), "--plot", str(tmp_path / "r.png"), "--models", "char_rnn")
    assert out.returncode == 0, out.stderr
    assert "| char_rnn |" in out.stdout and "| toxic_lstm |" in out.stdout
    assert "train step torch ms" in out.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    assert sorted(r["name"] for r in report["results"]) == ["char_rnn", "toxic_lstm"]
    for r in report["results"]:
        assert r["parity_max_rel_diff"] < 1e-10  # the parity check ran, in fp64
        assert r["fwd_bwd"]["fused"]["best_ms"] > 0 and r["fwd_bwd"]["speedup"] > 0
    assert report["models"][0]["model"] == "char_rnn"
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"


def test_bench_dtype(tmp_path):
    """--dtype bfloat16: both modules in bf16 (torch.nn runs them on the CPU too)."""
    out = run("bench", "--shapes", "char_rnn", "--repeats", "1", "--dtype", "bfloat16",
              "--json", str(tmp_path / "r.json"))
    assert out.returncode == 0, out.stderr
    assert "bfloat16" in out.stdout.splitlines()[0]
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["dtype"] == "bfloat16"
    assert report["results"][0]["parity_max_rel_diff"] < 1e-10  # still fp64
    assert report["results"][0]["fwd"]["fused"]["best_ms"] > 0
    assert run("bench", "--dtype", "int8").returncode != 0


def test_bench_float64_bound(tmp_path):
    """--dtype float64: the bound and the fractions of peak are against fp64's GEMM peak (an fp32
    peak made them half what they are); fp16/bf16 runs keep fp32's (fused_rnn computes in it)."""
    out = run("bench", "--shapes", "char_rnn", "--repeats", "1", "--no-check", "--dtype",
              "float64", "--json", str(tmp_path / "r.json"))
    assert out.returncode == 0, out.stderr
    assert "(float64)" in out.stdout.splitlines()[0]
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["gemm_peak_dtype"] == "float64"
    entry = report["results"][0]["fwd"]
    flops = bench.select("char_rnn")[0].flops(False)
    assert entry["bound_ms"] == flops / (report["gemm_peak_gflops"] * 1e9) * 1e3
    assert [bench.peak_dtype(d) for d in bench.DTYPES] == ["float32", "float64", "float32",
                                                            "float32"]


@pytest.mark.parametrize("dtype,peak_in", [("float64", torch.float64), ("float32", torch.float32),
                                           ("bfloat16", torch.float32)])
def test_bench_peak_measured_in_its_dtype(monkeypatch, dtype, peak_in):
    """Every GEMM peak of a run (before and after each shape) is measured in peak_dtype's dtype."""
    asked = []

    def fake_peak(device, dtype=torch.float32, **kwargs):
        asked.append(dtype)
        return 100.0

    monkeypatch.setattr(bench, "gemm_peak", fake_peak)
    report = bench.run(bench.select("char_rnn"), repeats=1, progress=False, check=False,
                       dtype=dtype)
    assert asked == [peak_in, peak_in]
    assert report["gemm_peak_gflops"] == 100.0


def test_bench_errors_and_list():
    bad = run("bench", "--shapes", "nope")
    assert bad.returncode != 0 and "unknown shape or set: nope" in bad.stderr
    listed = run("bench", "--list")
    assert listed.returncode == 0
    assert all(s.name in listed.stdout for s in bench.SHAPES)
    assert run("bench", "--device", "cuda").returncode != 0 or bench.torch.cuda.is_available()


def test_shape_sets_are_one_definition():
    assert {s.name for s in bench.select("default")} == {s.name for s in bench.SHAPES
                                                         if "default" in s.sets}
    packed = bench.select("packed")
    assert packed and all(s.packed for s in packed)
    imdb = next(s for s in bench.SHAPES if s.name == "imdb_lstm_packed")
    assert imdb.T == 500 and imdb.B == 32 and min(imdb.lengths()) >= 50


def test_sweep_shapes_and_plot(tmp_path):
    """The sweeps are shape sets of the same definition; the plot draws one panel per axis."""
    for axis, (field, values) in bench.SWEEPS.items():
        shapes = bench.select(f"sweep_{axis}")
        assert sorted(getattr(s, field) for s in shapes) == sorted(values)
        assert all(s.sweep == axis for s in shapes)
    assert not any(s.sweep for s in bench.select("default"))
    out = run("bench", "--shapes", "char_rnn,sweep_batch_1,sweep_batch_4", "--repeats", "1",
              "--no-check", "--plot", str(tmp_path / "s.png"), "--json", str(tmp_path / "s.json"))
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "s.json").read_text())
    assert {r["shape"]["sweep"] for r in report["results"]} == {"", "batch"}
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"


def test_parse_shape():
    """--shape's spec: the mode, T,B,I,H, then options; the name says them all."""
    s = bench.parse_shape("gru:100,8,64,32,layers=2,bidirectional,packed,min_len=10,batch_first")
    assert (s.mode, s.T, s.B, s.I, s.H, s.layers, s.bidirectional, s.packed, s.min_len,
            s.batch_first) == ("GRU", 100, 8, 64, 32, 2, True, True, 10, True)
    assert s.name == "gru_100x8x64x32_layers2_min_len10_bi_packed_bf" and s.sets == ("custom",)
    assert min(s.lengths()) >= 10 and max(s.lengths()) <= 100
    plain = bench.parse_shape("RNN:5,1,2,3")
    assert (plain.mode, plain.layers, plain.bidirectional, plain.packed) == ("RNN_TANH", 1,
                                                                             False, False)
    assert bench.parse_shape("RNN_RELU:5,1,2,3").mode == "RNN_RELU"


@pytest.mark.parametrize("spec", ["LSTM", "LSTM:1,2,3", "CNN:1,2,3,4", "LSTM:1,2,x,4",
                                  "LSTM:1,2,3,4,layers", "LSTM:1,2,3,4,bidirectional=1",
                                  "LSTM:1,2,3,4,heads=2", "LSTM:0,2,3,4", "LSTM:5,2,3,4,min_len=6",
                                  "LSTM:1,2,3,4,layers=0"])
def test_parse_shape_errors(spec):
    with pytest.raises(SystemExit, match="bad --shape"):
        bench.parse_shape(spec)


def test_bench_custom_shapes(tmp_path):
    """--shape alone runs only the user's shapes (parity check included); with --shapes, both."""
    out = run("bench", "--shape", "GRU:4,3,5,6,layers=2,bidirectional", "--shape",
              "RNN_RELU:7,2,3,4,packed", "--repeats", "1", "--json", str(tmp_path / "r.json"))
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    names = [r["name"] for r in report["results"]]
    assert names == ["gru_4x3x5x6_layers2_bi", "rnn_relu_7x2x3x4_packed"]
    assert all(r["parity_max_rel_diff"] < 1e-10 for r in report["results"])
    assert "| gru_4x3x5x6_layers2_bi | 4,3,5,6 x2L bi |" in out.stdout
    both = run("bench", "--shapes", "char_rnn", "--shape", "LSTM:3,2,2,2", "--repeats", "1",
               "--no-check")
    assert both.returncode == 0, both.stderr
    assert "| char_rnn |" in both.stdout and "| lstm_3x2x2x2 |" in both.stdout
    bad = run("bench", "--shape", "LSTM:3,2")
    assert bad.returncode != 0 and "bad --shape 'LSTM:3,2'" in bad.stderr


def test_random_shapes():
    """--random's draws: reproducible for a seed, inside the FLOP range, every mode and option."""
    shapes = bench.random_shapes(200, seed=5)
    assert shapes == bench.random_shapes(200, seed=5) != bench.random_shapes(200, seed=6)
    assert len({s.name for s in shapes}) == 200
    assert all(bench.RANDOM_FLOPS[0] <= s.flops(True) <= bench.RANDOM_FLOPS[1] for s in shapes)
    assert {s.mode for s in shapes} == set(bench.MODES)
    for option in ("bidirectional", "packed", "batch_first"):
        assert 0 < sum(getattr(s, option) for s in shapes) < 200
    assert {s.layers for s in shapes} == set(bench.RANDOM_DRAWS["layers"])
    assert all(s.name.startswith(f"random{k}_") and s.sets == ("random",)
               for k, s in enumerate(shapes))


def test_bench_random(tmp_path):
    """--random N alone runs N drawn shapes, parity checked; the summary names the lowest."""
    out = run("bench", "--random", "2", "--seed", "1", "--repeats", "1", "--json",
              str(tmp_path / "r.json"))
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert [r["name"] for r in report["results"]] == [s.name for s in bench.random_shapes(2, 1)]
    assert all(r["parity_max_rel_diff"] < 1e-10 for r in report["results"])
    lowest = min(report["results"], key=lambda r: r["fwd_bwd"]["speedup"])
    assert (f"forward+backward lowest {lowest['fwd_bwd']['speedup']:.2f}x ({lowest['name']})"
            in out.stdout.splitlines()[-1])


def _history():
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "history.py"
    spec = importlib.util.spec_from_file_location("history", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_history_spread(tmp_path):
    """benchmarks/history.py: per shape, the runs' lowest, median and highest speedups, from the
    runs of one device, dtype and thread count (random draws left out), of one machine if asked."""
    history = _history()

    def report(name, fwd, fb, sets=("default",), **kw):
        row = {"name": name, "shape": {"sets": list(sets)}, "fwd": {"speedup": fwd},
               "fwd_bwd": {"speedup": fb}}
        return {"device": "cpu", "threads": 2, "date": "2026-11-24", "results": [row], **kw}

    runs = {"a.json": report("s", 2.0, 1.5), "b.json": report("s", 1.0, 3.0),
            "c.json": report("s", 3.0, 2.0, dtype="float32"),
            "d.json": report("s", 9.0, 9.0, dtype="float64"),
            "e.json": report("s", 9.0, 9.0, threads=1),
            "f.json": report("random0_s", 9.0, 9.0, sets=("random",)),
            "g.json": report("s", 9.0, 9.0, date="2026-11-22")}
    for name, r in runs.items():
        (tmp_path / name).write_text(json.dumps(r))
    kept = history.load_runs(tmp_path, since="2026-11-23")
    assert sorted(kept) == ["a.json", "b.json", "c.json"]
    table = history.spread(kept)
    assert table["s"]["fwd_bwd"] == [(1.5, "a.json"), (2.0, "c.json"), (3.0, "b.json")]
    text = history.format_spread(table)
    assert "| s | 3 | 1.00x | 2.00x | 3.00x | 1.50x | 2.00x | 3.00x | a.json |" in text
    (tmp_path / "h.json").write_text(json.dumps(report("s", 9.0, 9.0, machine="Intel Xeon")))
    assert sorted(history.load_runs(tmp_path, machine="Xeon")) == ["h.json"]
    assert len(history.load_runs(tmp_path, since="2026-11-23")) == 4


def test_history_of_the_committed_runs():
    """It reads the committed results: every default shape has fp32 runs on 2 threads."""
    script = str(_history().__file__)
    out = subprocess.run([sys.executable, script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    for shape in bench.select("default"):
        assert f"| {shape.name} |" in out.stdout
    seeds = subprocess.run([sys.executable, script, "--shapes", "seeds"], capture_output=True,
                           text=True)
    assert seeds.returncode == 0, seeds.stderr
    rows = [line.split(" | ")[0][2:] for line in seeds.stdout.splitlines()[4:]]
    assert rows == [s.name for s in bench.select("seeds")]
