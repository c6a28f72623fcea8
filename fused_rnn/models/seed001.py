"""Seed 001: IMDB sentiment (packed LSTM) and the 2-layer RNN classifier."""

import torch
from torch import nn

from ._impl import rnn_namespace


class SentimentLSTM(nn.Module):
    """Embedding(V, 20, padding_idx=0) -> pack_padded_sequence(enforce_sorted=False) ->
    LSTM(20, 64) -> h_n[-1] -> Linear(64, 64) -> ReLU -> Linear(64, 1) -> Sigmoid.

    forward(text [B, T] padded with 0, lengths [B]). BCELoss, Adam(lr=1e-3), batch 32."""

    def __init__(self, vocab_size: int, embed_dim: int = 20, rnn_hidden_size: int = 64,
                 fc_hidden_size: int = 64, impl: str = "fused"):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        self.rnn = rnn_namespace(impl).LSTM(embed_dim, rnn_hidden_size, batch_first=True)
        self.fc1 = nn.Linear(rnn_hidden_size, fc_hidden_size)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(fc_hidden_size, 1)
        self.sigmoid = nn.Sigmoid()

    def forward(self, text: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        out = self.embedding(text)
        out = nn.utils.rnn.pack_padded_sequence(out, lengths.cpu(), enforce_sorted=False,
                                                batch_first=True)
        _, (hidden, _) = self.rnn(out)
        return self.sigmoid(self.fc2(self.relu(self.fc1(hidden[-1]))))


class SentimentRNN(nn.Module):
    """RNN(64, 32, num_layers=2, batch_first) -> h_n[-1] -> Linear(32, 1): the seed's Elman-RNN
    classifier over feature sequences [B, T, 64]."""

    def __init__(self, input_size: int = 64, hidden_size: int = 32, num_layers: int = 2,
                 impl: str = "fused"):
        super().__init__()
        self.rnn = rnn_namespace(impl).RNN(input_size, hidden_size, num_layers=num_layers,
                                           batch_first=True)
        self.fc = nn.Linear(hidden_size, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, hidden = self.rnn(x)
        return self.fc(hidden[-1])
