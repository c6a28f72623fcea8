"""`python -m fused_rnn train MODEL`: trains a seed model on its real data (--data) or, without a
download, on the seeds' own toy data, scikit-learn's digits, or clearly labelled synthetic
sequences. Prints loss and accuracy per epoch.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import random
import struct
import time
from typing import Callable

import torch
from torch import nn

from . import data as datasets
from ._progress import Progress
from .models import MODELS
from .models import seed003


@dataclasses.dataclass
class Task:
    model: nn.Module
    loss_fn: Callable  # (outputs, target) -> loss
    metric: Callable  # (outputs, target) -> (correct, count)
    train_batches: list  # [(inputs tuple, target)]
    eval_batches: list
    optimizer: Callable  # parameters -> torch.optim.Optimizer
    source: str  # what the data is


# ---- metrics and losses


def _binary_metric(out, target):
    return ((out > 0.5).float() == target).sum().item(), target.numel()


def _logit_metric(out, target):
    return ((out > 0).float() == target).sum().item(), target.numel()


def _argmax_metric(ignore_index=None):
    def metric(out, target):
        pred = out.argmax(1)
        keep = target != ignore_index if ignore_index is not None else torch.ones_like(target,
                                                                                     dtype=bool)
        return (pred[keep] == target[keep]).sum().item(), keep.sum().item()

    return metric


def _lm_loss(out, target):
    return nn.functional.nll_loss(out.reshape(-1, out.size(-1)), target.reshape(-1))


def _lm_metric(out, target):
    return (out.argmax(-1) == target).sum().item(), target.numel()


# ---- batching helpers


def _split(items, train_fraction=0.8, seed=0):
    items = list(items)
    random.Random(seed).shuffle(items)
    cut = max(1, int(len(items) * train_fraction))
    return items[:cut], items[cut:] or items[:1]


def _batches(items, batch_size, collate):
    return [collate(items[i:i + batch_size]) for i in range(0, len(items), batch_size)]


def _pad_collate(label_dtype=torch.float32):
    """[(ids list, label)] -> ((padded ids [B, T], lengths), label tensor)."""

    def collate(batch):
        seqs = [torch.tensor(s or [1], dtype=torch.int64) for s, _ in batch]
        lengths = torch.tensor([s.numel() for s in seqs])
        padded = nn.utils.rnn.pad_sequence(seqs, batch_first=True)
        labels = torch.tensor([lab for _, lab in batch], dtype=label_dtype)
        return (padded, lengths), labels

    return collate


def _synthetic_sequences(n, vocab, min_len, max_len, seed):
    g = random.Random(seed)
    return [[g.randrange(2, vocab) for _ in range(g.randint(min_len, max_len))] for _ in range(n)]


# ---- tasks, one per model


def _toxic(data, impl, limit, seed):
    if data:
        ids, labels, tokenizer = datasets.load_jigsaw(data, limit=limit)
        items, source, vocab = list(zip(ids, labels)), f"Jigsaw {data}", len(tokenizer)
    else:
        vocab = 40
        seqs = _synthetic_sequences(limit or 640, vocab, 20, 150, seed)
        items = []
        for s in seqs:
            label = torch.tensor([float(s.count(10 + k) >= 2) for k in range(6)])
            ids = datasets.Cutter(150).transform([s])[0]
            items.append((torch.tensor(ids), label))
        source = "synthetic sequences (label k: token 10+k occurs twice), no download"
    train, test = _split(items, 0.75, seed)

    def collate(batch):
        return (torch.stack([x for x, _ in batch]),), torch.stack([y for _, y in batch])

    model = MODELS["toxic"](vocab, impl=impl)
    return Task(model, nn.BCELoss(), _binary_metric, _batches(train, 32, collate),
                _batches(test, 32, collate), lambda p: torch.optim.Adam(p, lr=5e-3), source)


def _imdb(data, impl, limit, seed):
    if data:
        texts, labels = datasets.load_imdb(data, "train", limit)
        test_texts, test_labels = datasets.load_imdb(data, "test", limit)
        vocab = datasets.build_vocab(texts)

        def encode(text):
            return [vocab.get(t, 1) for t in datasets.imdb_tokenizer(text)]

        train = [(encode(t), y) for t, y in zip(texts, labels)]
        test = [(encode(t), y) for t, y in zip(test_texts, test_labels)]
        random.Random(seed).shuffle(train)
        source, size = f"aclImdb {data}", len(vocab)
    else:
        size = 30
        seqs = _synthetic_sequences(limit or 640, size, 5, 60, seed)
        items = [(s, float(s.count(2) > s.count(3))) for s in seqs]
        train, test = _split(items, 0.8, seed)
        source = "synthetic sequences (label: token 2 more frequent than token 3), no download"
    collate = _pad_collate()
    model = MODELS["imdb"](size, impl=impl)
    return Task(model, lambda o, y: nn.functional.binary_cross_entropy(o.squeeze(1), y),
                lambda o, y: _binary_metric(o.squeeze(1), y),
                _batches(train, 32, collate), _batches(test, 32, collate),
                lambda p: torch.optim.Adam(p, lr=1e-3), source)


def _imdb_rnn(data, impl, limit, seed):
    if data:
        raise ValueError("imdb_rnn runs on feature sequences only; it has no --data")
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(limit or 640, 20, 64, generator=g)
    y = (x[:, :, 0].mean(1) > 0).float()
    items = list(zip(x, y))
    train, test = _split(items, 0.8, seed)

    def collate(batch):
        return (torch.stack([a for a, _ in batch]),), torch.stack([b for _, b in batch])

    model = MODELS["imdb_rnn"](impl=impl)
    return Task(model, lambda o, y: nn.functional.binary_cross_entropy_with_logits(o.squeeze(1), y),
                lambda o, y: _logit_metric(o.squeeze(1), y),
                _batches(train, 32, collate), _batches(test, 32, collate),
                lambda p: torch.optim.Adam(p, lr=1e-3),
                "synthetic feature sequences (label: sign of feature 0's mean), no download")


def _tweets(data, impl, limit, seed):
    if data:
        texts, labels = datasets.load_tweets(data, limit)
        vocab = datasets.build_vocab(texts, datasets.tweet_tokenizer)
        items = [([vocab.get(t, 1) for t in datasets.tweet_tokenizer(x)], y)
                 for x, y in zip(texts, labels)]
        source, size = f"Tweets.csv {data}", len(vocab)
    else:
        size = 30
        seqs = _synthetic_sequences(limit or 640, size, 3, 40, seed)
        items = [(s, max(range(3), key=lambda k: (s.count(2 + k), -k))) for s in seqs]
        source = "synthetic sequences (class: the most frequent of tokens 2, 3, 4), no download"
    train, test = _split(items, 0.8, seed)
    collate = _pad_collate(label_dtype=torch.int64)
    model = MODELS["tweets"](size, impl=impl)
    return Task(model, nn.CrossEntropyLoss(), _argmax_metric(), _batches(train, 32, collate),
                _batches(test, 32, collate), lambda p: torch.optim.Adam(p, lr=1e-3), source)


def _chunker(data, impl, limit, seed):
    if data:
        sentences = datasets.load_conll2000(data, limit)
        words = {"<unk>": 0, "<pad>": 1}
        tags = {"<pad>": 0}
        for ws, pos, _ in sentences:
            for w in ws:
                words.setdefault(w.lower(), len(words))
            for t in pos:
                tags.setdefault(t, len(tags))
        items = [([words[w.lower()] for w in ws], [tags[t] for t in pos])
                 for ws, pos, _ in sentences]
        source, size, n_tags = f"CoNLL-2000 {data}", len(words), len(tags)
    else:
        size, n_tags = 30, 6
        seqs = _synthetic_sequences(limit or 640, size, 3, 30, seed)
        items = [(s, [1 + t % (n_tags - 1) for t in s]) for s in seqs]
        source = "synthetic sentences (tag: token id mod 5), no download"
    train, test = _split(items, 0.8, seed)

    def collate(batch):
        seqs = [torch.tensor(s) for s, _ in batch]
        tag_seqs = [torch.tensor(t) for _, t in batch]
        lengths = torch.tensor([s.numel() for s in seqs])
        return ((nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=1), lengths),
                nn.utils.rnn.pad_sequence(tag_seqs, batch_first=True, padding_value=0))

    model = MODELS["chunker"](size, n_tags, impl=impl)
    return Task(model, nn.CrossEntropyLoss(ignore_index=0), _argmax_metric(ignore_index=0),
                _batches(train, 32, collate), _batches(test, 32, collate),
                lambda p: torch.optim.Adam(p, lr=1e-3), source)


def _char_rnn(data, impl, limit, seed):
    if data:
        raise ValueError("char_rnn trains on the seed's 'hihell' -> 'ihello'; it has no --data")
    x = nn.functional.one_hot(torch.tensor([seed003.HIHELL]), 5).float()
    batch = ((x,), torch.tensor(seed003.IHELLO))
    model = MODELS["char_rnn"](impl=impl)
    return Task(model, nn.CrossEntropyLoss(), _argmax_metric(), [batch], [batch],
                lambda p: torch.optim.Adam(p, lr=0.1), "the seed's 'hihell' -> 'ihello'")


def _tagger(data, impl, limit, seed):
    if data:
        raise ValueError("tagger trains on the seed's two sentences; it has no --data")
    word_to_idx = {}
    for sentence, _ in seed003.TAGGER_SENTENCES:
        for w in sentence:
            word_to_idx.setdefault(w, len(word_to_idx))
    batches = [((torch.tensor([[word_to_idx[w] for w in s]]),),
                torch.tensor([seed003.TAGS.index(t) for t in tags]))
               for s, tags in seed003.TAGGER_SENTENCES]
    model = MODELS["tagger"](len(word_to_idx), len(seed003.TAGS), impl=impl)
    return Task(model, nn.CrossEntropyLoss(), _argmax_metric(), batches, batches,
                lambda p: torch.optim.Adam(p, lr=0.1), "the seed's two tagged sentences")


def _read_idx(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        magic = struct.unpack(">I", f.read(4))[0]
        dims = [struct.unpack(">I", f.read(4))[0] for _ in range(magic & 0xFF)]
        return torch.frombuffer(bytearray(f.read()), dtype=torch.uint8).reshape(dims)


def _find(folder, stem):
    for name in (stem, stem + ".gz"):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"MNIST: no {stem}[.gz] in {folder!r}")


def _mnist_rows(data, impl, limit, seed):
    if data:
        images = _read_idx(_find(data, "train-images-idx3-ubyte")).float() / 255
        labels = _read_idx(_find(data, "train-labels-idx1-ubyte")).long()
        images, labels = images[:limit], labels[:limit]
        source, width, hidden = f"MNIST {data}", 28, 128
    else:
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = torch.tensor(digits.images, dtype=torch.float32)[:limit] / 16
        labels = torch.tensor(digits.target)[:limit]
        source, width, hidden = "scikit-learn's 8x8 digits (the MNIST stand-in), no download", 8, 64
    items = list(zip(images, labels))
    train, test = _split(items, 0.8, seed)

    def collate(batch):
        return (torch.stack([x for x, _ in batch]),), torch.stack([y for _, y in batch])

    model = MODELS["mnist_rows"](width, hidden, impl=impl)
    return Task(model, nn.CrossEntropyLoss(), _argmax_metric(), _batches(train, 100, collate),
                _batches(test, 100, collate), lambda p: torch.optim.Adam(p, lr=1e-3), source)


def _rnn_lm(data, impl, limit, seed):
    if data:
        with open(data, encoding="utf-8") as f:
            words = f.read().lower().split()
        counts = {}
        for w in words:
            counts[w] = counts.get(w, 0) + 1
        vocab = {w: i + 1 for i, w in enumerate(sorted(counts, key=counts.get, reverse=True)[:999])}
        ids = [vocab.get(w, 0) for w in words][: (limit or len(words))]
        size, source = 1000, f"text {data}"
    else:
        size, g = 20, random.Random(seed)
        ids, tok = [], 1
        for _ in range(limit or 4000):
            tok = (3 * tok + 1) % size if g.random() < 0.9 else g.randrange(size)
            ids.append(tok)
        source = "synthetic text (next word = 3*word+1 mod 20, 10% noise), no download"
    T = 20
    seqs = [ids[i:i + T + 1] for i in range(0, len(ids) - T - 1, T)]
    train, test = _split(seqs, 0.8, seed)

    def collate(batch):
        t = torch.tensor(batch)
        return (t[:, :-1],), t[:, 1:]

    model = MODELS["rnn_lm"](size, hidden_dim=64 if not data else 100, impl=impl)
    return Task(model, _lm_loss, _lm_metric, _batches(train, 32, collate),
                _batches(test, 32, collate), lambda p: torch.optim.Adam(p, lr=5e-3), source)


TASKS = {"toxic": _toxic, "imdb": _imdb, "imdb_rnn": _imdb_rnn, "tweets": _tweets,
         "chunker": _chunker, "char_rnn": _char_rnn, "tagger": _tagger,
         "mnist_rows": _mnist_rows, "rnn_lm": _rnn_lm}
assert set(TASKS) == set(MODELS)


def make_task(name: str, data: str | None = None, impl: str = "fused", limit: int | None = None,
              seed: int = 0) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(TASKS)}")
    torch.manual_seed(seed)
    return TASKS[name](data, impl, limit, seed)


def evaluate(task: Task):
    task.model.eval()
    correct = count = 0
    loss = 0.0
    with torch.no_grad():
        for inputs, target in task.eval_batches:
            out = task.model(*inputs)
            loss += task.loss_fn(out, target).item()
            c, n = task.metric(out, target)
            correct, count = correct + c, count + n
    task.model.train()
    return loss / max(1, len(task.eval_batches)), correct / max(1, count)


def train(task: Task, epochs: int, progress: bool = True, log=print):
    """Trains for `epochs`; returns [{epoch, train_loss, eval_loss, eval_accuracy, seconds}]."""
    optimizer = task.optimizer(task.model.parameters())
    history = []
    for epoch in range(1, epochs + 1):
        task.model.train()
        start, total = time.perf_counter(), 0.0
        bar = Progress(len(task.train_batches), progress)
        for inputs, target in task.train_batches:
            optimizer.zero_grad()
            loss = task.loss_fn(task.model(*inputs), target)
            loss.backward()
            optimizer.step()
            total += loss.item()
            bar.step(f"epoch {epoch} loss {loss.item():.4f}")
        eval_loss, accuracy = evaluate(task)
        row = dict(epoch=epoch, train_loss=total / len(task.train_batches), eval_loss=eval_loss,
                   eval_accuracy=accuracy, seconds=time.perf_counter() - start)
        history.append(row)
        log(f"epoch {epoch}: train loss {row['train_loss']:.4f}  eval loss {eval_loss:.4f}  "
            f"eval accuracy {accuracy:.3f}  ({row['seconds']:.2f} s)")
    return history
