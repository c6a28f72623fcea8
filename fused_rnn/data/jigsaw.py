"""Seed 000: Jigsaw toxic comments (train.csv), lower-cased, symbols to spaces, word ids, cut or
padded to 150 tokens with pad id 1."""

from __future__ import annotations

import re

import torch

from .common import DataFormatError, read_csv_columns

JIGSAW_LABELS = ["toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate"]
BAD_SYMBOLS_RE = re.compile("[^0-9a-z ]")


def preprocess_comment(text: str) -> str:
    """The seed's TextPreprocessor: lower case, anything but [0-9a-z ] becomes a space."""
    return BAD_SYMBOLS_RE.sub(" ", text.lower())


class Tokenizer:
    """Word ids: "<UNK>" = 0, "<PAD>" = 1, then the sorted words of the fitted texts."""

    UNK, PAD = 0, 1

    def __init__(self):
        self.word2idx: dict[str, int] = {}

    def fit(self, texts):
        words = sorted({w for text in texts for w in text.split()})
        self.word2idx = {w: i for i, w in enumerate(["<UNK>", "<PAD>"] + words)}
        return self

    def transform(self, texts):
        return [[self.word2idx.get(w, self.UNK) for w in text.split()] for text in texts]

    def __len__(self):
        return len(self.word2idx)


class Cutter:
    """Cuts to `size` tokens or pads with the pad id (1) at the end."""

    def __init__(self, size: int = 150, pad: int = Tokenizer.PAD):
        self.size, self.pad = size, pad

    def transform(self, sequences):
        return [seq[:self.size] + [self.pad] * (self.size - len(seq[:self.size]))
                for seq in sequences]


def load_jigsaw(path: str, limit: int | None = None, size: int = 150, tokenizer=None):
    """Reads Jigsaw's train.csv: returns (token ids [N, size] int64, labels [N, 6] float32,
    tokenizer). A tokenizer fitted elsewhere (on a training split) can be passed in."""
    rows = read_csv_columns(path, ["comment_text"] + JIGSAW_LABELS, "Jigsaw train.csv", limit)
    texts = [preprocess_comment(r[0]) for r in rows]
    try:
        labels = torch.tensor([[float(v) for v in r[1:]] for r in rows], dtype=torch.float32)
    except ValueError as e:
        raise DataFormatError(f"Jigsaw train.csv: a label is not a number ({e})") from None
    tokenizer = tokenizer or Tokenizer().fit(texts)
    ids = Cutter(size).transform(tokenizer.transform(texts))
    return torch.tensor(ids, dtype=torch.int64).reshape(len(ids), size), labels, tokenizer
