"""Speedups over torch.nn across the committed benchmark runs (benchmarks/results/*.json).

    python benchmarks/history.py [--device cpu] [--dtype float32] [--threads 2] [--since DATE]
                                 [--machine TEXT] [--shapes NAMES|SETS]

Each run is one `python -m fused_rnn bench --json` file; this reads those of one device, dtype
and thread count and prints, per shape, how many runs timed it and the lowest, median and
highest speedup (forward and forward+backward), with the file of the lowest. The host is shared
and its load moves, so one run's ratio is a sample: this is their spread. Older runs timed older
code; --since keeps the runs from a date on, --machine those whose machine (as the report names
it: "AMD EPYC", "Intel(R) Xeon(R) Processor") contains the text, --shapes (as the bench takes it)
those shapes' rows.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def load_runs(folder=RESULTS, device="cpu", dtype="float32", threads=2, since="", machine=""):
    """{file name: report} for the runs that match (a report without a dtype ran in fp32)."""
    runs = {}
    for path in sorted(folder.glob("*.json")):
        report = json.loads(path.read_text())
        if ("results" in report and report.get("device") == device
                and report.get("dtype", "float32") == dtype
                and report.get("threads") == threads and report.get("date", "") >= since
                and machine in report.get("machine", "")
                and not any("random" in r["shape"]["sets"] for r in report["results"])):
            runs[path.name] = report
    return runs


def spread(runs, names=None):
    """{shape name: {pass: (speedups sorted with their file names)}} in the first-seen order, of
    the shapes in `names` (all where None)."""
    table = {}
    for name, report in runs.items():
        for row in report["results"]:
            if names is not None and row["name"] not in names:
                continue
            entry = table.setdefault(row["name"], {"fwd": [], "fwd_bwd": []})
            for pass_name in entry:
                entry[pass_name].append((row[pass_name]["speedup"], name))
    return {shape: {p: sorted(v) for p, v in entry.items()} for shape, entry in table.items()}


def format_spread(table) -> str:
    lines = ["| shape | runs | fwd lowest | fwd median | fwd highest | fwd+bwd lowest | "
             "fwd+bwd median | fwd+bwd highest | lowest fwd+bwd in |",
             "|---|---|---|---|---|---|---|---|---|"]
    for shape, entry in table.items():
        cells = []
        for pass_name in ("fwd", "fwd_bwd"):
            ratios = [r for r, _ in entry[pass_name]]
            cells += [f"{ratios[0]:.2f}x", f"{statistics.median(ratios):.2f}x",
                      f"{ratios[-1]:.2f}x"]
        lines.append(f"| {shape} | {len(entry['fwd'])} | {' | '.join(cells)} | "
                     f"{entry['fwd_bwd'][0][1]} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--since", default="", help="YYYY-MM-DD: runs of this date and after")
    parser.add_argument("--machine", default="", help="text the runs' machine names contain")
    parser.add_argument("--shapes", default=None, help="shape names or sets, as bench takes them")
    args = parser.parse_args(argv)
    runs = load_runs(RESULTS, args.device, args.dtype, args.threads, args.since, args.machine)
    if not runs:
        raise SystemExit("no runs match")
    print(f"{len(runs)} runs ({', '.join(runs)}): {args.device}, {args.dtype}, "
          f"{args.threads} threads" + (f", since {args.since}" if args.since else "")
          + (f", on {args.machine}" if args.machine else ""))
    print()
    names = None
    if args.shapes:
        from fused_rnn import bench

        names = {s.name for s in bench.select(args.shapes)}
    print(format_spread(spread(runs, names)))


if __name__ == "__main__":
    main()
