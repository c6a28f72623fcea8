"""Command line: `python -m fused_rnn bench [...]`."""

from __future__ import annotations

import argparse
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fused_rnn")
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="fused_rnn vs torch.nn on the seed models' shapes")
    bench.add_argument("--shapes", default="default",
                       help="comma-separated shape names or sets (default, seeds, packed, gru, "
                            "large); see fused_rnn.bench.SHAPES")
    bench.add_argument("--device", default="cpu", help="cpu or cuda")
    bench.add_argument("--repeats", type=int, default=5)
    bench.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    bench.add_argument("--json", default=None, help="write the results as JSON here")
    bench.add_argument("--plot", default=None, help="write a PNG of the speedups here")
    bench.add_argument("--no-check", action="store_true", help="skip the parity check")
    bench.add_argument("--no-progress", action="store_true")
    bench.add_argument("--list", action="store_true", help="list the shapes and exit")
    args = parser.parse_args(argv)

    import torch

    from . import bench as engine

    if args.list:
        for s in engine.SHAPES:
            print(f"{s.name:20s} {s.mode:8s} T={s.T} B={s.B} I={s.I} H={s.H} layers={s.layers} "
                  f"bi={s.bidirectional} packed={s.packed} sets={','.join(s.sets)}  {s.note}")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("--device cuda: no CUDA device is available here", file=sys.stderr)
        return 2
    report = engine.run(engine.select(args.shapes), args.device, repeats=args.repeats,
                        progress=not args.no_progress, check=not args.no_check)
    print(engine.format_table(report))
    if args.json:
        engine.save_json(report, args.json)
    if args.plot:
        engine.plot(report, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
