"""Command line: `python -m fused_rnn bench [...]`."""

from __future__ import annotations

import argparse
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fused_rnn")
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="fused_rnn vs torch.nn on the seed models' shapes")
    bench.add_argument("--shapes", default=None,
                       help="comma-separated shape names or sets (default, seeds, packed, gru, "
                            "decoder, large, sweep, sweep_batch, sweep_hidden, sweep_T), or none; "
                            "see fused_rnn.bench.SHAPES (default: default, or none where --shape "
                            "or --random is given)")
    bench.add_argument("--shape", action="append", default=[], metavar="SPEC",
                       help="a shape of your own, repeatable: MODE:T,B,I,H[,layers=N]"
                            "[,bidirectional][,packed][,min_len=N][,batch_first], MODE one of "
                            "LSTM, GRU, RNN_TANH, RNN_RELU (e.g. GRU:100,8,64,64,layers=2)")
    bench.add_argument("--random", type=int, default=0, metavar="N",
                       help="also N shapes drawn at random (fused_rnn.bench.random_shapes: any "
                            "mode, T, B, I, H, layers, bidirectional, packed, batch_first)")
    bench.add_argument("--seed", type=int, default=0, help="the --random draw's seed")
    bench.add_argument("--device", default="cpu", help="cpu or cuda")
    bench.add_argument("--dtype", default="float32",
                       choices=["float32", "float64", "bfloat16", "float16"],
                       help="what both modules run in (the parity check is fp64 regardless)")
    bench.add_argument("--repeats", type=int, default=5)
    bench.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    bench.add_argument("--json", default=None, help="write the results as JSON here")
    bench.add_argument("--plot", default=None, help="write a PNG of the speedups here")
    bench.add_argument("--no-check", action="store_true", help="skip the parity check")
    bench.add_argument("--no-progress", action="store_true")
    bench.add_argument("--list", action="store_true", help="list the shapes and exit")
    bench.add_argument("--models", nargs="?", const="all", default=None,
                       help="also time a training step of the seed models (comma-separated "
                            "names, or all); --shapes none skips the kernel shapes")
    train = sub.add_parser("train", help="train a seed model (fused_rnn.models)")
    train.add_argument("model", help="one of: toxic, imdb, imdb_rnn, tweets, chunker, char_rnn, "
                                     "tagger, mnist_rows, rnn_lm")
    train.add_argument("--data", default=None,
                       help="the real dataset: Jigsaw train.csv (toxic), the aclImdb folder "
                            "(imdb), Tweets.csv (tweets), CoNLL-2000 train.txt (chunker), a "
                            "folder of MNIST idx files (mnist_rows), a text file (rnn_lm); "
                            "without it: the seeds' toy data, scikit-learn digits or labelled "
                            "synthetic sequences")
    train.add_argument("--impl", choices=["fused", "torch"], default="fused")
    train.add_argument("--epochs", type=int, default=5)
    train.add_argument("--limit", type=int, default=None, help="at most this many examples")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    import torch

    if args.command == "train":
        from . import train as trainer

        task = trainer.make_task(args.model, args.data, args.impl, args.limit, args.seed)
        print(f"{args.model} on {args.impl}: {sum(p.numel() for p in task.model.parameters())} "
              f"parameters; data: {task.source}; {len(task.train_batches)} training batches")
        trainer.train(task, args.epochs, progress=not args.no_progress)
        return 0

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
    report = {}
    names = args.shapes or ("none" if args.shape or args.random else "default")
    shapes = ([] if names == "none" else engine.select(names))
    shapes += [engine.parse_shape(spec) for spec in args.shape]
    shapes += engine.random_shapes(args.random, args.seed)
    if shapes:
        report = engine.run(shapes, args.device, repeats=args.repeats,
                            progress=not args.no_progress, check=not args.no_check,
                            dtype=args.dtype)
        print(engine.format_table(report))
    if args.models:
        from .models import MODELS

        names = list(MODELS) if args.models == "all" else args.models.split(",")
        unknown = [n for n in names if n not in MODELS]
        if unknown:
            print(f"unknown model(s): {unknown}; choose from {list(MODELS)}", file=sys.stderr)
            return 2
        report["models"] = engine.run_models(names, args.repeats, not args.no_progress)
        print()
        print(engine.format_models_table(report["models"]))
    if args.json:
        engine.save_json(report, args.json)
    if args.plot and report.get("results"):
        engine.plot(report, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
