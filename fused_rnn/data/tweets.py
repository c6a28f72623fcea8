"""Seed 002: the airline-sentiment Tweets.csv (airline_sentiment, text)."""

from __future__ import annotations

import re

from .common import DataFormatError, read_csv_columns

CLASSES = {"negative": 0, "neutral": 1, "positive": 2}


def tweet_tokenizer(text: str) -> list[str]:
    """Lower-cased alphabetic words (the seed lemmatises with spaCy and drops stop words; that
    model is not a dependency here)."""
    return re.findall(r"[a-z]+", text.lower())


def load_tweets(path: str, limit: int | None = None):
    """(texts, labels 0/1/2) from Tweets.csv."""
    rows = read_csv_columns(path, ["airline_sentiment", "text"], "Tweets.csv", limit)
    labels = []
    for sentiment, _ in rows:
        if sentiment not in CLASSES:
            raise DataFormatError(f"Tweets.csv: unknown airline_sentiment {sentiment!r}; "
                                  f"expected one of {list(CLASSES)}")
        labels.append(CLASSES[sentiment])
    return [text for _, text in rows], labels
