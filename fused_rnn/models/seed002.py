"""Seed 002: the airline-tweet sentiment classifier and the CoNLL-2000 tagger (BiLSTMs on
packed sequences)."""

import torch
from torch import nn

from ._impl import rnn_namespace


class TweetClassifier(nn.Module):
    """Embedding(V, 100) -> packed -> BiLSTM(100, 128) -> cat(h_n, c_n of both directions) ->
    Linear(512, 3). forward(text [B, T], lengths [B]); CrossEntropyLoss, Adam."""

    def __init__(self, vocab_size: int, embed_size: int = 100, hidden_size: int = 128,
                 num_classes: int = 3, impl: str = "fused"):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_size)
        self.rnn = rnn_namespace(impl).LSTM(embed_size, hidden_size, bidirectional=True,
                                            batch_first=True)
        self.fc = nn.Linear(hidden_size * 2 * 2, num_classes)

    def forward(self, text: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = nn.utils.rnn.pack_padded_sequence(self.embedding(text), lengths.cpu(),
                                              batch_first=True, enforce_sorted=False)
        _, (hidden, cell) = self.rnn(x)
        hidden = hidden.transpose(0, 1).reshape(hidden.size(1), -1)
        cell = cell.transpose(0, 1).reshape(cell.size(1), -1)
        return self.fc(torch.cat([hidden, cell], dim=1))


class ChunkTagger(nn.Module):
    """Embedding(V, 100) -> packed -> BiLSTM(100, 128) -> pad_packed -> Linear(256, n_tags).

    forward(text [B, T], lengths [B]) -> scores [B, n_tags, T] for CrossEntropyLoss with
    ignore_index = the pad tag. Embedding uniform(0, 1), fc Xavier-uniform, as in the seed."""

    def __init__(self, vocab_size: int, num_tags: int, embed_size: int = 100,
                 hidden_size: int = 128, impl: str = "fused"):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_size)
        self.rnn = rnn_namespace(impl).LSTM(embed_size, hidden_size, bidirectional=True,
                                            batch_first=True)
        self.fc = nn.Linear(hidden_size * 2, num_tags)
        nn.init.uniform_(self.embedding.weight)
        nn.init.xavier_uniform_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def forward(self, text: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        total_length = text.size(1)
        x = nn.utils.rnn.pack_padded_sequence(self.embedding(text), lengths.cpu(),
                                              batch_first=True, enforce_sorted=False)
        x, _ = self.rnn(x)
        x, _ = nn.utils.rnn.pad_packed_sequence(x, total_length=total_length, batch_first=True)
        return self.fc(x).transpose(1, 2)
