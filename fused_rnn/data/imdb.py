"""Seed 001: IMDB reviews from the aclImdb/{train,test}/{pos,neg} folders, the seed's tokenizer
(HTML stripped, emoticons kept), a frequency vocabulary with <pad> = 0 and <unk> = 1, and the
collate function that pads a batch and returns its lengths."""

from __future__ import annotations

import os
import re
from collections import Counter

import torch

LABELS = {"pos": 1, "neg": 0}


def imdb_tokenizer(text: str) -> list[str]:
    text = re.sub("<[^>]*>", "", text)
    emoticons = re.findall(r"(?::|;|=)(?:-)?(?:\)|\(|D|P)", text.lower())
    text = re.sub(r"[\W]+", " ", text.lower()) + " ".join(emoticons).replace("-", "")
    return text.split()


def load_imdb(root: str, split: str = "train", limit: int | None = None):
    """(reviews, labels) from root/{split}/{pos,neg}/*.txt (root is the aclImdb folder)."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    texts, labels = [], []
    for name, label in LABELS.items():
        folder = os.path.join(root, split, name)
        if not os.path.isdir(folder):
            raise FileNotFoundError(
                f"IMDB: no folder {folder!r}; pass the aclImdb folder (with train/ and test/)")
        files = sorted(f for f in os.listdir(folder) if f.endswith(".txt"))
        for file in files[:limit]:
            with open(os.path.join(folder, file), encoding="utf-8") as f:
                texts.append(f.read())
            labels.append(label)
    return texts, labels


def build_vocab(texts, tokenizer=imdb_tokenizer) -> dict[str, int]:
    """Tokens by decreasing frequency from id 2; <pad> = 0, <unk> = 1."""
    counts = Counter()
    for text in texts:
        counts.update(tokenizer(text))
    vocab = {"<pad>": 0, "<unk>": 1}
    for i, (token, _) in enumerate(sorted(counts.items(), key=lambda kv: kv[1], reverse=True)):
        vocab[token] = i + 2
    return vocab


def collate_batch(batch, vocab: dict[str, int], tokenizer=imdb_tokenizer):
    """[(text, label)] -> (ids [B, T_max] padded with 0, labels [B] float, lengths [B])."""
    ids, labels, lengths = [], [], []
    for text, label in batch:
        seq = torch.tensor([vocab.get(t, 1) for t in tokenizer(str(text))] or [1],
                           dtype=torch.int64)
        ids.append(seq)
        labels.append(float(label))
        lengths.append(seq.numel())
    padded = torch.nn.utils.rnn.pad_sequence(ids, batch_first=True)
    return padded, torch.tensor(labels), torch.tensor(lengths)
