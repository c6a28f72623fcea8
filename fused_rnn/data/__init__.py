"""Loaders for the seed models' real datasets (read from files the user downloaded) with the
seeds' preprocessing, and the no-download stand-ins the `train` command uses without --data."""

from .imdb import collate_batch, imdb_tokenizer, load_imdb, build_vocab
from .jigsaw import JIGSAW_LABELS, Cutter, Tokenizer, load_jigsaw, preprocess_comment
from .tweets import load_tweets, tweet_tokenizer
from .conll import load_conll2000
from .common import DataFormatError

__all__ = ["DataFormatError", "load_jigsaw", "JIGSAW_LABELS", "preprocess_comment", "Tokenizer",
           "Cutter", "load_imdb", "imdb_tokenizer", "build_vocab", "collate_batch",
           "load_tweets", "tweet_tokenizer", "load_conll2000"]
