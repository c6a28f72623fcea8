"""Seed 002: CoNLL-2000 chunking files (train.txt / test.txt): one "word POS chunk" line per
token, a blank line between sentences."""

from __future__ import annotations

from .common import DataFormatError, require_file


def load_conll2000(path: str, limit: int | None = None):
    """[(words, pos_tags, chunk_tags)] per sentence. The seed tags words with their POS."""
    require_file(path, "CoNLL-2000")
    sentences, words, pos, chunks = [], [], [], []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                if words:
                    sentences.append((words, pos, chunks))
                    words, pos, chunks = [], [], []
                    if limit is not None and len(sentences) >= limit:
                        return sentences
                continue
            if len(parts) != 3:
                raise DataFormatError(f"CoNLL-2000: {path!r} line {number} has {len(parts)} "
                                      "columns; expected 'word POS chunk'")
            words.append(parts[0])
            pos.append(parts[1])
            chunks.append(parts[2])
    if words:
        sentences.append((words, pos, chunks))
    return sentences
