"""The seed models (../shared/seeds, DESIGN.md), each runnable on torch.nn or fused_rnn.

Every model takes `impl="fused"` (default) or `impl="torch"` and builds its recurrent layers from
that namespace; everything else is plain torch. `fused_rnn.convert` turns a torch-built one into
the fused one with the same weights. MODELS maps the CLI names to the classes.
"""

from .seed000 import ToxicCommentLSTM
from .seed001 import SentimentLSTM, SentimentRNN
from .seed002 import ChunkTagger, TweetClassifier
from .seed003 import CharRNN, LSTMTagger, RowRNN
from .seed004 import RNNLanguageModel

MODELS = {
    "toxic": ToxicCommentLSTM,
    "imdb": SentimentLSTM,
    "imdb_rnn": SentimentRNN,
    "tweets": TweetClassifier,
    "chunker": ChunkTagger,
    "char_rnn": CharRNN,
    "tagger": LSTMTagger,
    "mnist_rows": RowRNN,
    "rnn_lm": RNNLanguageModel,
}

__all__ = ["MODELS", "ToxicCommentLSTM", "SentimentLSTM", "SentimentRNN", "TweetClassifier",
           "ChunkTagger", "CharRNN", "LSTMTagger", "RowRNN", "RNNLanguageModel"]
